package pki

import (
	"cmp"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// Profile is the shape of one kind of certificate: what the CA fills in around the subject and names a caller
// gives. Profiles are data (smallstep x509util style): the table [Profiles] is the whole policy of the PKI.
type Profile struct {
	// Name identifies the profile in errors.
	Name string
	// IsCA marks a CA certificate; MaxPathLen is its path length constraint (0 means none below it).
	IsCA       bool
	MaxPathLen int
	// KeyUsage and ExtKeyUsage are copied into the certificate.
	KeyUsage    x509.KeyUsage
	ExtKeyUsage []x509.ExtKeyUsage
	// Validity is the default lifetime; a caller may ask for another (device --days).
	Validity time.Duration
	// ServerNames adds the loopback names (localhost, 127.0.0.1, ::1) and the caller's hosts as SANs.
	ServerNames bool
}

// Organization is the subject organisation of every certificate of the PKI.
const Organization = "VitalGate"

// Default lifetimes.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 365 * 24 * time.Hour
	// IssuingCAValidity is the lifetime of the gateway's online issuing CA.
	IssuingCAValidity = 90 * 24 * time.Hour
	// OperationalValidity is the default lifetime of a certificate the issuing CA signs at enrolment.
	OperationalValidity = 30 * 24 * time.Hour
)

// backdate is how far before "now" a certificate starts to be valid, to absorb clock skew between machines.
const backdate = 5 * time.Minute

// Profiles is the certificate policy of the deployment, one entry per kind of certificate.
var Profiles = struct {
	Root, DeviceCA, IssuingCA, GatewayCA, Device, GatewayServer, GatewayClient, BrokerServer Profile
}{
	// The root allows two CAs below it: the device CA and the gateway's issuing CA under it.
	Root: Profile{Name: "root CA", IsCA: true, MaxPathLen: 2,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, Validity: CAValidity},
	// The intermediates are restricted to client auth: a device or gateway CA cannot issue a server certificate.
	// The device CA's key stays offline; it signs the gateway's issuing CA, the one CA allowed below it.
	DeviceCA: Profile{Name: "device CA", IsCA: true, MaxPathLen: 1,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Validity: CAValidity},
	// The issuing CA is online on the gateway: it signs the operational certificates of enrolled devices and
	// its own revocation list, lives a short time and is renewed with certs.
	IssuingCA: Profile{Name: "issuing CA", IsCA: true, MaxPathLen: 0,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Validity: IssuingCAValidity},
	GatewayCA: Profile{Name: "gateway CA", IsCA: true, MaxPathLen: 0,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Validity: CAValidity},
	Device: Profile{Name: "device", KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Validity: LeafValidity},
	GatewayClient: Profile{Name: "gateway client", KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Validity: LeafValidity},
	GatewayServer: Profile{Name: "gateway server", KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, Validity: LeafValidity, ServerNames: true},
	BrokerServer: Profile{Name: "broker server", KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, Validity: LeafValidity, ServerNames: true},
}

// Request is what a caller supplies for one certificate; the profile supplies the rest.
type Request struct {
	CommonName string
	OrgUnit    string // optional (the site of a gateway)
	// Organization replaces the subject organisation [Organization] (a manufacturer's name on a factory
	// identity); SerialNumber is the subject serialNumber attribute (a factory identity's), none when empty.
	Organization string
	SerialNumber string
	Hosts        []string      // extra SANs for server profiles: IP addresses or DNS names
	Validity     time.Duration // 0: the profile's default
}

// loopbackNames are always in a server certificate.
var loopbackNames = []string{"localhost", "127.0.0.1", "::1"}

// Template returns the certificate template of p for r, with a fresh random serial number, valid from a few
// minutes before now.
func (p Profile) Template(r Request, now time.Time) (*x509.Certificate, error) {
	if r.CommonName == "" {
		return nil, fmt.Errorf("%s certificate: empty common name", p.Name)
	}
	validity := p.Validity
	if r.Validity != 0 {
		validity = r.Validity
	}
	if validity <= 0 {
		return nil, fmt.Errorf("%s certificate: validity %v is not positive", p.Name, validity)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	t := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: r.CommonName, Organization: []string{cmp.Or(r.Organization, Organization)}, SerialNumber: r.SerialNumber},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              p.KeyUsage,
		ExtKeyUsage:           slices.Clone(p.ExtKeyUsage),
		BasicConstraintsValid: true,
		IsCA:                  p.IsCA,
	}
	if r.OrgUnit != "" {
		t.Subject.OrganizationalUnit = []string{r.OrgUnit}
	}
	if p.IsCA {
		t.MaxPathLen = p.MaxPathLen
		t.MaxPathLenZero = p.MaxPathLen == 0
	}
	if p.ServerNames {
		for _, h := range append(slices.Clone(loopbackNames), r.Hosts...) {
			h = strings.TrimSpace(h)
			if h == "" {
				continue
			}
			if ip := net.ParseIP(h); ip != nil {
				if !slices.ContainsFunc(t.IPAddresses, ip.Equal) {
					t.IPAddresses = append(t.IPAddresses, ip)
				}
				continue
			}
			if !validHostname(h) {
				return nil, fmt.Errorf("%s certificate: invalid host name %q", p.Name, h)
			}
			if !slices.Contains(t.DNSNames, h) {
				t.DNSNames = append(t.DNSNames, h)
			}
		}
	} else if len(r.Hosts) > 0 {
		return nil, fmt.Errorf("%s certificate: takes no host names", p.Name)
	}
	return t, nil
}

// validHostname accepts DNS names made of letters, digits, '-', '.', and a leading "*." wildcard.
func validHostname(h string) bool {
	h = strings.TrimPrefix(h, "*.")
	if len(h) == 0 || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// issuer is a CA certificate with its key.
type issuer struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// loadIssuer reads a CA pair and checks that the key belongs to the certificate.
func loadIssuer(certFile, keyFile string) (*issuer, error) {
	c, err := LoadCert(certFile)
	if err != nil {
		return nil, err
	}
	k, err := LoadKey(keyFile)
	if err != nil {
		return nil, err
	}
	pub, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(k.Public()) {
		return nil, fmt.Errorf("%s does not match %s", keyFile, certFile)
	}
	if !c.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certFile)
	}
	return &issuer{cert: c, key: k}, nil
}

// sign issues a certificate of profile p for r and pub. ca == nil self-signs with selfKey (the root).
func (ca *issuer) sign(p Profile, r Request, pub crypto.PublicKey, selfKey crypto.Signer, now time.Time) (*x509.Certificate, []byte, error) {
	t, err := p.Template(r, now)
	if err != nil {
		return nil, nil, err
	}
	parent, key := t, selfKey
	if ca != nil {
		parent, key = ca.cert, ca.key
		if t.NotAfter.After(ca.cert.NotAfter) { // a certificate never outlives its issuer
			t.NotAfter = ca.cert.NotAfter
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, t, parent, pub, key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign %s certificate: %w", p.Name, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse %s certificate: %w", p.Name, err)
	}
	return c, der, nil
}
