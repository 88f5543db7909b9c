package est

import (
	"testing"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// TestReviewRenewalAfterRevocationOnDisk: `certs revoke --id` has put the device's certificates on
// issuing-crl.pem, but the gateway has not reloaded the list yet (it polls every second; here Revoked never
// learns of it). A renewal in that window must not hand out a certificate that the revocation missed.
func TestReviewRenewalAfterRevocationOnDisk(t *testing.T) {
	e := newEstEnv(t, nil)
	key := newKey(t)
	status, body := e.post(e.factoryClient("dev-00001"), "simpleenroll", csr(t, key, "dev-00001"))
	if status != 200 {
		t.Fatalf("enrol: %d %s", status, body)
	}
	cert := certsOf(t, body)[0]
	if r, err := pki.RevokeDevice(e.pki, "dev-00001"); err != nil || r.Issued != 1 {
		t.Fatalf("revoke: %+v %v", r, err)
	}
	status, body = e.post(e.certClient(cert, key), "simplereenroll", csr(t, newKey(t), "dev-00001"))
	if status == 200 {
		t.Fatalf("a certificate revoked on disk renewed: new serial %x, on no revocation list", certsOf(t, body)[0].SerialNumber)
	}
	e.expectRefusal(status, body, 403, EventDenied, "dev-00001", "revoked")
}
