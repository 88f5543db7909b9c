package main

import (
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// The commands of factory identities and of the gateway's issuing CA.

func setupFactory(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "PKI `directory`")
	count := fs.Int("count", 0, "number of devices")
	mfr := fs.String("manufacturer", pki.DefaultManufacturer, "the manufacturer's `NAME` (created when new)")
	prefix := fs.String("prefix", pki.DefaultDevicePrefix, "device ID prefix: the identities enrol as `P`-00001, P-00002, ...")
	key := keyFlag(fs)
	days := fs.Int("days", int(pki.FactoryValidity/(24*time.Hour)), "validity of the identities in days")
	return []string{"dir", "count"}, func(w io.Writer) error {
		alg, err := pki.ParseKeyAlg(*key)
		if err != nil {
			return usageError{err}
		}
		if *days < 1 {
			return usageError{fmt.Errorf("--days %d: want at least 1", *days)}
		}
		start := time.Now()
		entries, err := pki.IssueFactory(*dir, pki.FactoryOptions{Manufacturer: *mfr, Count: *count, Prefix: *prefix, Key: alg, Days: *days})
		if err != nil {
			return err
		}
		first, last := entries[0], entries[len(entries)-1]
		fmt.Fprintf(w, "%s of %s (%s..%s) for %s..%s, listed in %s, in %s\n", plural(len(entries), "factory identity", "factory identities"), *mfr,
			first.Serial, last.Serial, first.ID, last.ID, filepath.Join(*dir, pki.FileEnroll), time.Since(start).Round(time.Millisecond))
		return nil
	}
}

func setupManufacturer(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "PKI `directory`")
	name := fs.String("name", "", "the manufacturer's `NAME` ([A-Za-z0-9._-]{1,64})")
	key := keyFlag(fs)
	return []string{"dir", "name"}, func(w io.Writer) error {
		alg, err := pki.ParseKeyAlg(*key)
		if err != nil {
			return usageError{err}
		}
		if err := pki.NewManufacturer(*dir, *name, alg); err != nil {
			return err
		}
		fmt.Fprintln(w, filepath.Join(*dir, pki.ManufacturersDir, *name+".crt"))
		return nil
	}
}

func setupRenewIssuing(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "PKI `directory` holding device-ca.key and issuing-ca.crt")
	days := fs.Int("days", int(pki.IssuingCAValidity/(24*time.Hour)), "validity of the renewed issuing CA in days")
	return []string{"dir"}, func(w io.Writer) error {
		if *days < 1 {
			return usageError{fmt.Errorf("--days %d: want at least 1", *days)}
		}
		c, err := pki.RenewIssuing(*dir, *days)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "renewed %s until %s (serial %x): copy it to the gateway's PKI directory\n",
			filepath.Join(*dir, pki.FileIssuingCA), c.NotAfter.UTC().Format(time.RFC3339), c.SerialNumber)
		return nil
	}
}
