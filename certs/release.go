package main

import (
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/vitalgate/vitalgate/internal/release"
)

func setupReleaseKey(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "`directory` for release.key and release.pub")
	return []string{"dir"}, func(w io.Writer) error {
		if err := release.GenerateKey(*dir); err != nil {
			return err
		}
		fmt.Fprintf(w, "wrote %s (keep it offline) and %s (publish it with the releases)\n",
			filepath.Join(*dir, release.KeyFile), filepath.Join(*dir, release.PubFile))
		return nil
	}
}

func setupSignRelease(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	key := fs.String("key", "", "the release key, `release.key`")
	file := fs.String("file", "", "the checksum `file` (SHA256SUMS)")
	return []string{"key", "file"}, func(w io.Writer) error {
		if err := release.Sign(*key, *file); err != nil {
			return err
		}
		fmt.Fprintf(w, "signed %s: %s.sig\n", *file, *file)
		return nil
	}
}

func setupVerifyRelease(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	pubFile := fs.String("pub", "", "the release's public key, `release.pub`")
	file := fs.String("file", "", "the checksum `file` (SHA256SUMS), with FILE.sig beside it")
	ignore := fs.Bool("ignore-missing", false, "skip listed files that were not downloaded")
	return []string{"pub", "file"}, func(w io.Writer) error {
		pub, err := release.LoadPublic(*pubFile)
		if err != nil {
			return err
		}
		names, err := release.Verify(pub, *file, *ignore)
		if err != nil {
			return err
		}
		for _, n := range names {
			fmt.Fprintf(w, "%s: OK\n", n)
		}
		fmt.Fprintf(w, "%s: signature good, %d files checked\n", *file, len(names))
		return nil
	}
}
