//go:build !unix

package pki

func setUmask(m int) int { return m }
