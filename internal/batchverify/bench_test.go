package batchverify

import (
	"crypto/ed25519"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// benchItems are n valid signatures by 64 keys.
func benchItems(b *testing.B, n int) []item {
	signers := make([]*signer, 64)
	for i := range signers {
		signers[i] = newSigner(b, 1000+i)
	}
	items := make([]item, n)
	for i := range items {
		items[i] = signers[i%len(signers)].item("", fmt.Appendf(nil, "a record of about a hundred bytes, number %d, %080d", i, i))
	}
	return items
}

// BenchmarkSingle is the cost of one signature checked alone: Go's
// crypto/ed25519 and the cofactored check with an expanded key.
func BenchmarkSingle(b *testing.B) {
	items := benchItems(b, 256)
	b.Run("stdlib", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			it := &items[i%len(items)]
			if !ed25519.Verify(it.pub, it.msg, it.sig) {
				b.Fatal("refused")
			}
		}
	})
	b.Run("expanded", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			it := &items[i%len(items)]
			if !it.key.Verify(it.msg, it.sig) {
				b.Fatal("refused")
			}
		}
	})
}

// BenchmarkBatcher is the cost per signature through a Batcher with 1, 8
// and 64 goroutines submitting at once (run with -cpu 1 for one core);
// sigs/batch is the mean batch size reached.
func BenchmarkBatcher(b *testing.B) {
	items := benchItems(b, 256)
	for _, subs := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("submitters=%d", subs), func(b *testing.B) {
			bt := New(0, 0)
			var next atomic.Int64
			b.ResetTimer()
			var wg sync.WaitGroup
			for range subs {
				wg.Go(func() {
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						it := &items[i%int64(len(items))]
						if !bt.Verify(it.key, it.msg, it.sig) {
							b.Error("refused")
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			bt.Close()
			st := bt.Stats()
			if n := st.Batches + st.Alone + st.Inline; n > 0 {
				b.ReportMetric(float64(b.N)/float64(n), "sigs/batch")
			}
		})
	}
}
