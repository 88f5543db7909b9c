package bench

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// Identity is one device's certificate and key.
type Identity struct {
	ID   string
	TLS  tls.Certificate
	Key  crypto.Signer
	Leaf *x509.Certificate
}

// LoadIdentities reads the certificates and keys of ids from the PKI
// directory, on every core.
func LoadIdentities(pkiDir string, ids []string) ([]*Identity, error) {
	out := make([]*Identity, len(ids))
	err := parallel(len(ids), func(i int) error {
		certFile, keyFile := pki.DevicePaths(pkiDir, ids[i])
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("device %s: %w", ids[i], err)
		}
		key, ok := c.PrivateKey.(crypto.Signer)
		if !ok {
			return fmt.Errorf("device %s: key is not a signer", ids[i])
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return fmt.Errorf("device %s: %w", ids[i], err)
		}
		c.Leaf = leaf
		out[i] = &Identity{ID: ids[i], TLS: c, Key: key, Leaf: leaf}
		return nil
	})
	return out, err
}

// Msg is one pre-signed record of a device.
type Msg struct {
	Seq     uint64
	Payload []byte // tagged COSE_Sign1 of the CBOR record
}

// PreSign makes perDevice records for each device, seq firstSeq onwards,
// measured now by the device's physiology (kinds round-robin over the
// devices, as the fleet assigns them), and signs them: ES256 for P-256 keys.
// Work runs on every core; the result is msgs[device][i].
func PreSign(devs []*Identity, kinds []string, perDevice int, firstSeq uint64, seed int64) ([][]Msg, error) {
	if len(kinds) == 0 {
		return nil, errors.New("pre-sign: no kinds")
	}
	out := make([][]Msg, len(devs))
	now := time.Now()
	err := parallel(len(devs), func(i int) error {
		d, err := fleet.NewDevice(devs[i].ID, kinds[i%len(kinds)], seed)
		if err != nil {
			return err
		}
		d.SetSeq(firstSeq - 1)
		ms := make([]Msg, perDevice)
		for j := range ms {
			// Measured a millisecond apart, so ts increases with seq.
			rec := d.NextAt(now.Add(time.Duration(j) * time.Millisecond))
			p, err := fleet.SignRecord(devs[i].Key, devs[i].ID, &rec)
			if err != nil {
				return err
			}
			ms[j] = Msg{Seq: rec.Seq, Payload: p}
		}
		out[i] = ms
		return nil
	})
	return out, err
}

// parallel calls f(0..n-1) on runtime.NumCPU() goroutines and joins the
// errors.
func parallel(n int, f func(i int) error) error {
	errs := make([]error, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				errs[i] = f(i)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
