package inventory

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// filled is an inventory of n devices that reported, a tenth below the
// minimum.
func filled(b *testing.B, n int, file string) *Inventory {
	inv, err := New(Options{File: file, MaxDevices: n, MinFirmware: map[string]string{"oxi": "1.3.0"}})
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		dev := fmt.Sprintf("oxi-%05d", i)
		inv.Connected(dev, cert(int64(i+1), time.Now().Add(30*24*time.Hour)), "127.0.0.1:1")
		fw := "1.3.0"
		if i%10 == 0 {
			fw = "1.2.0"
		}
		inv.Status(dev, Report{Model: "oxi", FW: fw, FWSeq: 3})
		inv.Verdict(dev, "")
	}
	return inv
}

// BenchmarkMessage is what the inventory adds to each accepted message:
// the verdict count and the fw_below_min question.
func BenchmarkMessage(b *testing.B) {
	inv := filled(b, 10000, "")
	ids := make([]string, 10000)
	for i := range ids {
		ids[i] = fmt.Sprintf("oxi-%05d", i) // in the gateway, the session's
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		dev := ids[i%len(ids)]
		inv.Verdict(dev, "")
		_ = inv.BelowMin(dev)
		i++
	}
}

// BenchmarkSave writes the inventory of 50,000 devices (the default cap).
func BenchmarkSave(b *testing.B) {
	path := filepath.Join(b.TempDir(), File)
	inv := filled(b, DefaultMaxDevices, path)
	for b.Loop() {
		inv.mu.Lock()
		inv.dirty = true
		inv.mu.Unlock()
		if err := inv.Save(); err != nil {
			b.Fatal(err)
		}
	}
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(st.Size())/DefaultMaxDevices, "file-bytes/device")
}
