package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// The file's buckets and keys (see the package documentation, Storage).
var (
	bucketQueue = []byte("q")
	bucketLast  = []byte("last")
	bucketLog   = []byte("lastlog")
	bucketMeta  = []byte("meta")
	keyNext     = []byte("next")
)

// valueVersion is the version byte of a q value.
const valueVersion = 1

// maxDevLen bounds device IDs (bbolt keys; the gateway's are at most 64).
const maxDevLen = 1024

// maxMarkLen bounds the mark stored with a device's last seq.
const maxMarkLen = 64

// logVersion is the version byte of a lastlog value.
const logVersion = 1

// compactEvery is the number of lastlog values after which a commit brings
// "last" up to date and empties lastlog.
const compactEvery = 2048

// boltCheck runs bbolt's consistency check (key order across pages,
// reachability) and returns its first finding.
func boltCheck(tx *bolt.Tx) error {
	var first error
	n := 0
	for err := range tx.Check() {
		if first == nil {
			first = err
		}
		n++
	}
	if n > 1 {
		return fmt.Errorf("%w (and %d more problems)", first, n-1)
	}
	return first
}

// load creates the buckets and rebuilds the in-memory state.
func (q *Queue) load() error {
	return q.db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketQueue, bucketLast, bucketLog, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		if v := tx.Bucket(bucketMeta).Get(keyNext); len(v) == 8 {
			q.next = binary.BigEndian.Uint64(v)
		}
		if err := q.loadLast(tx.Bucket(bucketLast)); err != nil {
			return err
		}
		if err := q.loadLog(tx.Bucket(bucketLog)); err != nil {
			return err
		}
		if err := q.loadQueue(tx.Bucket(bucketQueue)); err != nil {
			return err
		}
		if q.next == 0 {
			q.next = 1
		}
		return nil
	})
}

// loadLast reads the compacted last seqs and their marks.
func (q *Queue) loadLast(b *bolt.Bucket) error {
	return b.ForEach(func(k, v []byte) error {
		seq, mark, err := decodeLast(v)
		if err != nil {
			return fmt.Errorf("last seq of %q: %w", k, err)
		}
		q.last[string(k)] = seq
		if len(mark) > 0 {
			q.marks[string(k)] = bytes.Clone(mark)
		}
		return nil
	})
}

// loadLog applies the lastlog values over "last", in key order.
func (q *Queue) loadLog(b *bolt.Bucket) error {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 8 {
			return fmt.Errorf("lastlog key %x: bad length", k)
		}
		err := decodeLog(v, func(dev string, seq uint64, mark []byte) {
			// Seqs only grow; never let an entry lower one (a file
			// written by an older gateway after this one ran).
			if last, ok := q.last[dev]; ok && seq < last {
				return
			}
			q.last[dev] = seq
			if len(mark) > 0 {
				q.marks[dev] = bytes.Clone(mark)
			} else {
				delete(q.marks, dev)
			}
			q.dirty[dev] = struct{}{}
		})
		if err != nil {
			return fmt.Errorf("lastlog key %x: %w", k, err)
		}
		q.logNext = binary.BigEndian.Uint64(k) + 1
		q.logLen++
	}
	return nil
}

// loadQueue counts the queued records and their bytes, and finds the
// oldest record's enqueue time and the next key.
func (q *Queue) loadQueue(b *bolt.Bucket) error {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 8 {
			return fmt.Errorf("queue key %x: bad length", k)
		}
		e, at, err := decodeValue(v)
		if err != nil {
			return fmt.Errorf("queue key %x: %w", k, err)
		}
		if q.count == 0 {
			q.oldestAt = at
		}
		q.count++
		q.bytes += int64(len(e.Data))
		if key := binary.BigEndian.Uint64(k); key >= q.next {
			q.next = key + 1
		}
	}
	return nil
}

// encodeLast is the "last" value of a device: big-endian seq, then mark.
func encodeLast(seq uint64, mark []byte) []byte {
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(mark)), seq), mark...)
}

// decodeLast parses a "last" value. mark aliases v.
func decodeLast(v []byte) (seq uint64, mark []byte, err error) {
	if len(v) < 8 {
		return 0, nil, fmt.Errorf("bad length %d", len(v))
	}
	return binary.BigEndian.Uint64(v), v[8:], nil
}

// appendLog appends to b the lastlog entry of one device.
func appendLog(b []byte, dev string, seq uint64, mark []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(dev)))
	b = append(b, dev...)
	b = binary.AppendUvarint(b, seq)
	b = binary.AppendUvarint(b, uint64(len(mark)))
	return append(b, mark...)
}

// decodeLog calls f for each device of a lastlog value. mark aliases v.
func decodeLog(v []byte, f func(dev string, seq uint64, mark []byte)) error {
	if len(v) == 0 || v[0] != logVersion {
		return errors.New("unknown lastlog version")
	}
	v = v[1:]
	for len(v) > 0 {
		n, k := binary.Uvarint(v)
		if k <= 0 || n == 0 || n > uint64(len(v)-k) {
			return errors.New("bad device length")
		}
		dev := string(v[k : k+int(n)])
		v = v[k+int(n):]
		seq, k := binary.Uvarint(v)
		if k <= 0 {
			return errors.New("bad seq")
		}
		v = v[k:]
		n, k = binary.Uvarint(v)
		if k <= 0 || n > maxMarkLen || n > uint64(len(v)-k) {
			return errors.New("bad mark length")
		}
		f(dev, seq, v[k:k+int(n)])
		v = v[k+int(n):]
	}
	return nil
}

// encodeValue appends the q value of a record to b.
func encodeValue(b []byte, dev string, seq uint64, at int64, data []byte) []byte {
	b = append(b, valueVersion)
	b = binary.AppendUvarint(b, uint64(len(dev)))
	b = append(b, dev...)
	b = binary.AppendUvarint(b, seq)
	b = binary.AppendVarint(b, at)
	return append(b, data...)
}

// decodeValue parses a q value. Data aliases v.
func decodeValue(v []byte) (Entry, int64, error) {
	var e Entry
	if len(v) == 0 || v[0] != valueVersion {
		return e, 0, errors.New("unknown value version")
	}
	v = v[1:]
	n, k := binary.Uvarint(v)
	if k <= 0 || n > uint64(len(v)-k) {
		return e, 0, errors.New("bad device length")
	}
	e.Dev = string(v[k : k+int(n)])
	v = v[k+int(n):]
	if e.Seq, k = binary.Uvarint(v); k <= 0 {
		return e, 0, errors.New("bad seq")
	}
	v = v[k:]
	at, k := binary.Varint(v)
	if k <= 0 {
		return e, 0, errors.New("bad time")
	}
	e.Data = v[k:]
	return e, at, nil
}
