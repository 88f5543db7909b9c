package wire_test

import (
	"testing"

	"github.com/vitalgate/vitalgate/internal/wire"
)

// BenchmarkEntry is the gateway's per-record encoding: the queue entry of
// one accepted record. Its allocations are the ones each accepted record
// costs (compare with -benchmem).
func BenchmarkEntry(b *testing.B) {
	in := &wire.Accepted{Site: "site1", GW: "gw1", RX: 1767225601000, Rec: &vitals, Raw: h(vitalsCBOR), Sig: make([]byte, 200)}
	for _, f := range []wire.Format{wire.CBOR, wire.JSON} {
		b.Run(string(f), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := wire.Entry(f, in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
