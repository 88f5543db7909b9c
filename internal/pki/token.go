package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TokenClaims are the claims of an app token: the sites the app may read, its role ([RoleClinician], or ""
// which means the same, or [RoleOperator]), and the registered claims sub, iss
// (= [TokenIssuer]), aud (= [TokenAudience]), exp, iat and jti (the token's ID, which [RevokeToken] revokes).
type TokenClaims struct {
	Sites []string `json:"sites"`
	Role  string   `json:"role,omitempty"`
	jwt.RegisteredClaims
}

// Roles of an app (the token claim role), for the sites of its token. A
// clinician reads the telemetry, FHIR resources, gateway status and device
// certificates; an operator reads also the security events, rollout jobs and
// inventory, and publishes rollout jobs (jobs/{site}/{job}). A token without
// a role is a clinician's.
//
// [RoleExporter] names the broker's own FHIR exporter, which publishes on
// fhir/{site}/{device}: no token carries it ([ValidRole] refuses it), so no
// app can speak for the exporter.
const (
	RoleClinician = "clinician"
	RoleOperator  = "operator"
	RoleExporter  = "exporter"
)

// ValidRole accepts the roles a token may carry: none, [RoleClinician] or [RoleOperator].
func ValidRole(r string) bool { return r == "" || r == RoleClinician || r == RoleOperator }

// TokenRole is the role a token's claim role grants: "" is [RoleClinician].
// Call it on a role [ValidRole] accepted.
func TokenRole(r string) string {
	if r == "" {
		return RoleClinician
	}
	return r
}

// signingMethod returns the JWT algorithm of a token key: ES256 for ECDSA P-256, EdDSA for Ed25519.
func signingMethod(pub crypto.PublicKey) (jwt.SigningMethod, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return jwt.SigningMethodES256, nil
		}
	case ed25519.PublicKey:
		return jwt.SigningMethodEdDSA, nil
	}
	return nil, errors.New("unsupported token key (want ECDSA P-256 or Ed25519)")
}

// validSite accepts a site name: the alphabet of device IDs, so it is one MQTT topic level.
func validSite(s string) bool { return ValidDeviceID(s) }

// MintToken signs an app JWT with dir/app-token.key: ES256 for a P-256 key, EdDSA for Ed25519. The claims are
// sub, sites, iss = [TokenIssuer], aud = [TokenAudience], iat = now, exp = now + ttl and jti = 128 random bits
// in lowercase hex (see [NewTokenID]), so the token can be revoked on its own. The token has no role claim, so
// it is a clinician's: see [MintRoleToken].
func MintToken(dir, sub string, sites []string, ttl time.Duration) (string, error) {
	return MintRoleToken(dir, sub, "", sites, ttl)
}

// MintRoleToken is [MintToken] with the claim role (see [ValidRole]; "" leaves it out).
func MintRoleToken(dir, sub, role string, sites []string, ttl time.Duration) (string, error) {
	if !ValidRole(role) {
		return "", fmt.Errorf("invalid role %q (want %s or %s)", role, RoleClinician, RoleOperator)
	}
	if sub == "" || strings.TrimSpace(sub) != sub || len(sub) > 256 {
		return "", fmt.Errorf("invalid subject %q", sub)
	}
	if len(sites) == 0 {
		return "", errors.New("no sites")
	}
	for _, s := range sites {
		if !validSite(s) {
			return "", fmt.Errorf("invalid site %q (want "+idSyntax+")", s)
		}
	}
	if ttl <= 0 {
		return "", fmt.Errorf("ttl %v is not positive", ttl)
	}
	key, err := LoadKey(filepath.Join(dir, FileAppTokenKey))
	if err != nil {
		return "", fmt.Errorf("token key: %w", err)
	}
	m, err := signingMethod(key.Public())
	if err != nil {
		return "", err
	}
	jti, err := NewTokenID()
	if err != nil {
		return "", err
	}
	now := time.Now().Truncate(time.Second)
	claims := TokenClaims{Sites: sites, Role: role, RegisteredClaims: jwt.RegisteredClaims{
		ID:        jti,
		Subject:   sub,
		Issuer:    TokenIssuer,
		Audience:  jwt.ClaimStrings{TokenAudience},
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}}
	var signKey any = key
	if ec, ok := key.(*ecdsa.PrivateKey); ok {
		signKey = ec
	}
	tok, err := jwt.NewWithClaims(m, claims).SignedString(signKey)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return tok, nil
}

// VerifyToken checks an app JWT against pub (see [LoadTokenKey]): the algorithm must match the key type (ES256
// for P-256, EdDSA for Ed25519), iss and aud must be [TokenIssuer] and [TokenAudience], exp is required and must
// be in the future. The error is flat: it does not expose parser internals beyond the failed check.
func VerifyToken(pub crypto.PublicKey, token string) (*TokenClaims, error) {
	m, err := signingMethod(pub)
	if err != nil {
		return nil, err
	}
	var c TokenClaims
	_, err = jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return pub, nil },
		jwt.WithValidMethods([]string{m.Alg()}),
		jwt.WithIssuer(TokenIssuer),
		jwt.WithAudience(TokenAudience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	)
	if err != nil {
		return nil, fmt.Errorf("invalid token: %w", err)
	}
	if c.Subject == "" {
		return nil, errors.New("invalid token: no subject")
	}
	return &c, nil
}

// NewTokenID returns a fresh token ID (jti): 128 random bits in lowercase hex.
func NewTokenID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("token ID: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
