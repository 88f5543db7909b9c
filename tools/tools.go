//go:build tools

// Package tools pins the release and CI tools (CycloneDX SBOMs,
// govulncheck and its offline database) in a module of their own, so they
// never become dependencies of the programs:
//
//	go run -modfile=tools/go.mod github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod ...
package tools

import (
	_ "github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod"
	_ "golang.org/x/vuln/cmd/govulncheck"
	_ "golang.org/x/vulndb/cmd/indexdb"
)
