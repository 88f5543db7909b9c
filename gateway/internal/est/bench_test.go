package est

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// BenchmarkEnroll measures simpleenroll through the real HTTPS listener: each enrolment is a new TLS
// connection with the factory identity (as a device enrols once), a CSR checked, a certificate signed and
// recorded (fsync) in issued/ID.pem, and the PKCS#7 answer. 16 identities take turns, re-enrolling their IDs.
func BenchmarkEnroll(b *testing.B) {
	e := newEstEnv(b, nil)
	const n = 16
	if _, err := pki.IssueFactory(e.pki, pki.FactoryOptions{Count: n, Start: 4}); err != nil {
		b.Fatal(err)
	}
	var clients []*http.Client
	var bodies [][]byte
	for i := range n {
		id := fmt.Sprintf("dev-%05d", i+4)
		c := e.factoryClient(id)
		c.Transport.(*http.Transport).DisableKeepAlives = true
		clients = append(clients, c)
		bodies = append(bodies, csr(b, newKey(b), id))
	}
	if b.N > n*(pki.MaxIssuedPerDevice-1) {
		b.Fatalf("b.N %d over what %d devices may hold; use -benchtime=%dx or less", b.N, n, n*(pki.MaxIssuedPerDevice-1))
	}
	b.ResetTimer()
	for i := range b.N {
		if status, body := e.post(clients[i%n], "simpleenroll", bodies[i%n]); status != http.StatusOK {
			b.Fatalf("enrolment %d: %d %s", i, status, body)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enrolments/s")
}
