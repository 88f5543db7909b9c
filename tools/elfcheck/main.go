// Command elfcheck checks release binaries: each NAME-linux-ARCH file must
// be an ELF executable for ARCH (amd64: x86-64, arm64: AArch64) that asks
// for no dynamic loader (static: it runs on any Linux, and in a scratch
// container image).
//
//	elfcheck dist/gateway-linux-amd64 dist/gateway-linux-arm64 ...
package main

import (
	"debug/elf"
	"fmt"
	"os"
	"strings"
)

var machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

func main() {
	bad := 0
	for _, path := range os.Args[1:] {
		if err := check(path); err != nil {
			fmt.Fprintf(os.Stderr, "elfcheck: %s: %v\n", path, err)
			bad++
			continue
		}
		fmt.Printf("%s: ok\n", path)
	}
	if bad > 0 || len(os.Args) < 2 {
		os.Exit(1)
	}
}

func check(path string) error {
	arch := path[strings.LastIndex(path, "-")+1:]
	want, ok := machines[arch]
	if !ok {
		return fmt.Errorf("name does not end in -amd64 or -arm64")
	}
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if f.Machine != want || f.Type != elf.ET_EXEC {
		return fmt.Errorf("%v %v, want %v executable", f.Machine, f.Type, want)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("asks for a dynamic loader: not static")
		}
	}
	return nil
}
