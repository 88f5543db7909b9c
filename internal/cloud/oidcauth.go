package cloud

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/vitalgate/vitalgate/internal/oidc"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// appClaims are what the broker takes from a verified app token, whoever
// signed it.
type appClaims struct {
	sub   string
	sites []string
	role  string // the claim: "" (a clinician), pki.RoleClinician or pki.RoleOperator
	exp   time.Time
	jti   string // "" only for the provider's tokens, which may lack one
	// issuer is the outside provider's issuer, "" for the app-token key.
	issuer string
}

// oidcVerifyTimeout bounds the fetch of the provider's key set that a token
// with an unknown key ID may cause during its CONNECT.
const oidcVerifyTimeout = 10 * time.Second

// verifyToken checks an app token and returns its claims, or nil, a
// metric reason and a flat log detail. The app-token key comes first: a
// token goes to the outside provider only when its iss, read before any
// check, is the provider's issuer, so neither can stand in for the other.
func (h *authHook) verifyToken(tok string) (*appClaims, string, string) {
	iss, parsed := unverifiedIssuer(tok)
	if h.oidc == nil || iss != h.oidc.Issuer() {
		if parsed && iss != pki.TokenIssuer {
			return nil, "issuer", h.issuers()
		}
		return h.verifyLocal(tok)
	}
	ctx, cancel := context.WithTimeout(context.Background(), oidcVerifyTimeout)
	defer cancel()
	c, err := h.oidc.Verify(ctx, tok)
	if err != nil {
		if errors.Is(err, oidc.ErrClaims) {
			return nil, "bad_claims", err.Error() // names claims and roles, never the token
		}
		reason := tokenReason(err)
		if errors.Is(err, oidc.ErrUnknownKey) {
			reason = "unknown_key"
		}
		return nil, reason, h.flatOIDCError(reason)
	}
	return &appClaims{sub: c.Subject, sites: c.Sites, role: c.Role, exp: c.Expires, jti: c.ID, issuer: h.oidc.Issuer()}, "", ""
}

// unverifiedIssuer is the iss claim of tok, unchecked: only to choose the
// key that checks it, or to refuse it. parsed is false when tok is not a
// JWT.
func unverifiedIssuer(tok string) (iss string, parsed bool) {
	mc := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(tok, mc); err != nil {
		return "", false
	}
	iss, _ = mc["iss"].(string)
	return iss, true
}

// issuers is the log detail of a token of another issuer.
func (h *authHook) issuers() string {
	if h.oidc == nil {
		return flatTokenError("issuer")
	}
	return fmt.Sprintf("token issuer is neither %s nor the oidc.issuer %s", pki.TokenIssuer, h.oidc.Issuer())
}

// flatOIDCError is the log detail of a reason for a token of the provider.
func (h *authHook) flatOIDCError(reason string) string {
	switch reason {
	case "unknown_key":
		return "token signed by a key not in the provider's key set (its kid is unknown, also after fetching the set again, or a fetch is not due yet)"
	case "bad_signature":
		return "token signature or algorithm refused (RS256, ES256 or EdDSA with a key of the provider's key set only)"
	case "audience":
		return "token audience does not contain the configured oidc.audience"
	case "missing_claim":
		return "token lacks a required claim (exp, aud)"
	}
	return flatTokenError(reason)
}

// newOIDC starts the verifier of the outside provider, if one is
// configured: fetch failures are logged and counted, and the cached keys
// stay in use.
func (b *Broker) newOIDC() (*oidc.Verifier, error) {
	if !b.cfg.OIDC.Enabled() {
		return nil, nil
	}
	v, err := oidc.New(b.cfg.OIDC, oidc.Options{
		Roles: []string{pki.RoleOperator, pki.RoleClinician},
		OnRefreshError: func(err error) {
			b.m.oidcRefreshFailures.Inc()
			b.log.Warn("oidc: fetching the provider's key set failed; keys fetched before, if any, stay in use", "error", err)
		},
	})
	if err != nil {
		return nil, err
	}
	b.m.oidc.Store(v)
	return v, nil
}
