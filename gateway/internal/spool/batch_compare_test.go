package spool

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/verdict"
	bolt "go.etcd.io/bbolt"
)

// BenchmarkBoltBatchParallel is the alternative to the committer that the
// package does not use: the same transaction per append through bbolt's
// db.Batch (MaxBatchSize 1000, MaxBatchDelay 1 ms), with the replay check
// and key allocation read from the transaction so that a re-run is
// idempotent. Kept to compare with BenchmarkAppendParallel.
func BenchmarkBoltBatchParallel(b *testing.B) {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "q.db"), 0o600, &bolt.Options{
		Timeout: time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	db.MaxBatchSize, db.MaxBatchDelay = 1000, time.Millisecond
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, n := range [][]byte{bucketQueue, bucketLast, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(n); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 300)
	var devs atomic.Int64
	b.SetParallelism(32)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		dev := fmt.Sprintf("dev-%05d", devs.Add(1))
		var seq uint64
		for pb.Next() {
			seq++
			value := encodeValue(nil, dev, seq, time.Now().UnixMilli(), data)
			err := db.Batch(func(tx *bolt.Tx) error {
				qb, lb, mb := tx.Bucket(bucketQueue), tx.Bucket(bucketLast), tx.Bucket(bucketMeta)
				if v := lb.Get([]byte(dev)); v != nil && seq <= binary.BigEndian.Uint64(v) {
					return verdict.New(verdict.Replay, "seq %d not above last accepted %d", seq, binary.BigEndian.Uint64(v))
				}
				next := uint64(1)
				if v := mb.Get(keyNext); v != nil {
					next = binary.BigEndian.Uint64(v)
				}
				if err := qb.Put(binary.BigEndian.AppendUint64(nil, next), value); err != nil {
					return err
				}
				if err := mb.Put(keyNext, binary.BigEndian.AppendUint64(nil, next+1)); err != nil {
					return err
				}
				return lb.Put([]byte(dev), binary.BigEndian.AppendUint64(nil, seq))
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}
