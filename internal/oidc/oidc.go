// Package oidc verifies the access tokens of an outside OpenID Connect
// provider (a hospital's identity provider), so that people sign in to the
// cloud broker with the accounts they already have.
//
// # Use
//
//	v, err := oidc.New(cfg, oidc.Options{Roles: []string{"operator", "clinician"}})
//	defer v.Close()
//	claims, err := v.Verify(ctx, token) // subject, sites, role, expiry, jti
//
// # Trust
//
// The provider's signing keys come from its JWKS URL over HTTPS (optionally
// trusting one CA file), fetched at [New], every [Config.Refresh], and when
// a token names a key ID not in the cache (at most once per
// [Config.RefreshUnknown], so tokens with made-up key IDs cannot make the
// broker hammer the provider). A fetch that fails, or a key set that does
// not parse, changes nothing: the cached keys stay in use, and
// [Options.OnRefreshError] is told. A key set that parses replaces the cache,
// so a key the provider removed is refused from then on.
//
// A token must be signed with RS256, ES256 or EdDSA (never "none", never an
// HMAC, whose key would be public) by a key of the set, name the configured
// issuer and audience, and carry exp; the claims holding the subject, the
// sites and the role are configurable.
package oidc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// Config is the `oidc:` section of the broker's configuration. The provider
// is off while Issuer is empty.
type Config struct {
	// Issuer is the provider's issuer identifier: the iss claim of its
	// tokens, exactly.
	Issuer string `yaml:"issuer"`
	// JWKSURL is the https:// URL of the provider's JSON Web Key Set (its
	// discovery document's jwks_uri).
	JWKSURL string `yaml:"jwks_url"`
	// JWKSCA is a PEM file of the CA certificates to trust for JWKSURL.
	// Empty: the system's roots.
	JWKSCA string `yaml:"jwks_ca"`
	// Audience is the value the aud claim must contain: the client ID or
	// API identifier the provider issues the broker's tokens for.
	Audience string `yaml:"audience"`
	// SubjectClaim names the claim that identifies the person or app
	// (default "sub").
	SubjectClaim string `yaml:"subject_claim"`
	// SitesClaim names the claim that lists the sites: an array of
	// strings, or one string of sites separated by spaces or commas
	// (default "sites").
	SitesClaim string `yaml:"sites_claim"`
	// RoleClaim names the claim that carries the role: a string, or an
	// array of strings such as a list of groups (default "role").
	RoleClaim string `yaml:"role_claim"`
	// Refresh is how often the key set is fetched again (default 1h).
	Refresh time.Duration `yaml:"refresh"`
	// RefreshUnknown is the least time between two fetches caused by a
	// token whose key ID is not in the cache (default 5m).
	RefreshUnknown time.Duration `yaml:"refresh_unknown"`
}

// Defaults of the claims and refresh intervals.
const (
	DefaultSubjectClaim   = "sub"
	DefaultSitesClaim     = "sites"
	DefaultRoleClaim      = "role"
	DefaultRefresh        = time.Hour
	DefaultRefreshUnknown = 5 * time.Minute
)

// Algorithms are the signature algorithms a token may use.
var Algorithms = []string{"RS256", "ES256", "EdDSA"}

const (
	// maxJWKS bounds the key set read from the provider.
	maxJWKS = 1 << 20
	// fetchTimeout bounds one fetch of the key set.
	fetchTimeout = 10 * time.Second
	// leeway is the clock skew allowed on iat and nbf (not on exp).
	leeway = 30 * time.Second
)

// Enabled tells whether an outside provider is configured.
func (c Config) Enabled() bool { return c.Issuer != "" }

// withDefaults fills in the defaults of the fields left empty.
func (c Config) withDefaults() Config {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&c.SubjectClaim, DefaultSubjectClaim)
	def(&c.SitesClaim, DefaultSitesClaim)
	def(&c.RoleClaim, DefaultRoleClaim)
	if c.Refresh == 0 {
		c.Refresh = DefaultRefresh
	}
	if c.RefreshUnknown == 0 {
		c.RefreshUnknown = DefaultRefreshUnknown
	}
	return c
}

// Validate reports every problem of c, each naming its key under `oidc.`.
// A configuration without issuer, jwks_url and audience is off and valid.
func (c Config) Validate() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("oidc.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.Issuer == "" && c.JWKSURL == "" && c.Audience == "" {
		return nil
	}
	if c.Issuer == "" {
		bad("issuer", "required with jwks_url or audience")
	}
	if c.Audience == "" {
		bad("audience", "required: without it a token the provider issued for any other application would be accepted")
	}
	if u, err := url.Parse(c.JWKSURL); c.JWKSURL == "" {
		bad("jwks_url", "required")
	} else if err != nil || u.Scheme != "https" || u.Host == "" {
		bad("jwks_url", "%q is not an https:// URL", c.JWKSURL)
	}
	if c.Refresh != 0 && (c.Refresh < time.Second || c.Refresh > 24*time.Hour) {
		bad("refresh", "%s outside 1s..24h", c.Refresh)
	}
	if c.RefreshUnknown != 0 && (c.RefreshUnknown < time.Second || c.RefreshUnknown > 24*time.Hour) {
		bad("refresh_unknown", "%s outside 1s..24h", c.RefreshUnknown)
	}
	return errs
}

// Options are what the caller of [New] decides, beyond the configuration.
type Options struct {
	// Roles are the role names a token may carry, highest first. A role
	// claim that is a string must be one of them (or empty); in an array,
	// the highest of them counts and other values are ignored.
	Roles []string
	// OnRefreshError, if set, is called each time fetching the key set
	// fails (the cached keys stay in use). The error names the URL, never
	// a token.
	OnRefreshError func(err error)
}

// Claims are what a verified token says.
type Claims struct {
	Subject string
	Sites   []string
	// Role is one of [Options.Roles], or "" when the token names none.
	Role    string
	Expires time.Time
	// ID is the jti claim, "" when the token has none.
	ID string
}

// Errors of [Verifier.Verify] besides those of golang-jwt
// (jwt.ErrTokenExpired, jwt.ErrTokenInvalidIssuer, ...), which it wraps.
var (
	// ErrUnknownKey: the token names a key ID that the provider's key set
	// does not hold, also after a refetch (or the refetch was not due yet).
	ErrUnknownKey = errors.New("signed by a key not in the provider's key set")
	// ErrClaims: the subject, sites or role claim is missing or unusable.
	ErrClaims = errors.New("unusable claims")
)

// Verifier checks tokens against one provider. Create it with [New] and
// stop its refresh with [Verifier.Close].
type Verifier struct {
	cfg    Config
	opts   Options
	kf     keyfunc.Keyfunc
	parser *jwt.Parser
	// unknown allows a fetch for an unknown kid once per RefreshUnknown.
	unknown *rate.Limiter
	cancel  context.CancelFunc
}

// New fetches the provider's key set once (a failure is reported to
// [Options.OnRefreshError], not returned: tokens are refused until a later
// fetch succeeds) and starts refreshing it. It returns an error only for a
// configuration it cannot use.
func New(cfg Config, opts Options) (*Verifier, error) {
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if !cfg.Enabled() {
		return nil, errors.New("oidc: no issuer configured")
	}
	cfg = cfg.withDefaults()
	client, err := httpClient(cfg.JWKSCA)
	if err != nil {
		return nil, err
	}
	onErr := func(string) func(context.Context, error) {
		return func(_ context.Context, err error) {
			if opts.OnRefreshError != nil {
				opts.OnRefreshError(fmt.Errorf("fetch %s: %w", cfg.JWKSURL, err))
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
		Client:          client,
		HTTPTimeout:     fetchTimeout,
		RefreshInterval: cfg.Refresh,
		// Verify decides when an unknown kid may cause a fetch (v.unknown),
		// without making the CONNECT wait for its turn; the wait bound is
		// then the bound of that fetch.
		RefreshUnknownKID:       rate.NewLimiter(rate.Inf, 1),
		RateLimitWaitMax:        fetchTimeout,
		RefreshErrorHandlerFunc: onErr,
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("oidc: %w", err)
	}
	return &Verifier{
		cfg:  cfg,
		opts: opts,
		kf:   kf,
		parser: jwt.NewParser(
			jwt.WithValidMethods(Algorithms),
			jwt.WithIssuer(cfg.Issuer),
			jwt.WithAudience(cfg.Audience),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithLeeway(leeway),
		),
		unknown: rate.NewLimiter(rate.Every(cfg.RefreshUnknown), 1),
		cancel:  cancel,
	}, nil
}

// httpClient fetches the key set over TLS 1.2 or later, trusting caFile (or
// the system's roots), following no redirect away from https, and reading
// at most maxJWKS bytes.
func httpClient(caFile string) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("oidc.jwks_ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("oidc.jwks_ca: no PEM certificate in %s", caFile)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	// One fetch an hour or so: a kept-alive connection would only outlive
	// the Verifier's Close (two goroutines and a socket each).
	tr.DisableKeepAlives = true
	return &http.Client{
		Transport: limitedBody{tr},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" || len(via) >= 3 {
				return errors.New("redirect refused (not https, or more than 3)")
			}
			return nil
		},
	}, nil
}

// limitedBody cuts a response body at maxJWKS bytes: reading past it fails,
// so an endless key set is a failed fetch, not exhausted memory.
type limitedBody struct{ rt http.RoundTripper }

func (l limitedBody) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.rt.RoundTrip(req)
	if err == nil {
		resp.Body = &capped{ReadCloser: resp.Body, left: maxJWKS}
	}
	return resp, err
}

type capped struct {
	io.ReadCloser
	left int64
}

func (c *capped) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, fmt.Errorf("key set larger than %d bytes", maxJWKS)
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.ReadCloser.Read(p)
	c.left -= int64(n)
	return n, err
}

// Issuer is the configured issuer: the iss of the tokens to give to Verify.
func (v *Verifier) Issuer() string { return v.cfg.Issuer }

// Keys is the number of keys in the cache.
func (v *Verifier) Keys() int {
	keys, err := v.kf.Storage().KeyReadAll(context.Background())
	if err != nil {
		return 0
	}
	return len(keys)
}

// cached tells whether the cache holds a key with ID kid (a string).
func (v *Verifier) cached(kid any) bool {
	id, ok := kid.(string)
	if !ok {
		return true // no key ID: every key was tried
	}
	keys, err := v.kf.Storage().KeyReadAll(context.Background())
	if err != nil {
		return false
	}
	for _, k := range keys {
		if k.Marshal().KID == id {
			return true
		}
	}
	return false
}

// Close stops refreshing the key set. It is safe to call twice.
func (v *Verifier) Close() { v.cancel() }

// Verify checks token and returns its claims. ctx bounds the refetch an
// unknown key ID may cause. The error wraps [ErrUnknownKey], [ErrClaims] or
// golang-jwt's error for the check that failed; it never holds the token.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	mc := jwt.MapClaims{}
	kf := v.kf.KeyfuncCtx(ctx)
	_, err := v.parser.ParseWithClaims(token, mc, func(t *jwt.Token) (any, error) {
		if !v.cached(t.Header[jwkset.HeaderKID]) && !v.unknown.Allow() {
			return nil, ErrUnknownKey // no fetch due yet: refused at once
		}
		key, err := kf(t)
		if err != nil && !v.cached(t.Header[jwkset.HeaderKID]) {
			// Not in the key set, also after the refetch this token
			// caused, or the refetch was not due yet.
			return nil, ErrUnknownKey
		}
		return key, err
	})
	if err != nil {
		return nil, err
	}
	exp, err := mc.GetExpirationTime()
	if err != nil || exp == nil {
		return nil, jwt.ErrTokenRequiredClaimMissing
	}
	if !time.Now().Before(exp.Time) {
		return nil, jwt.ErrTokenExpired // exp has no leeway
	}
	c := &Claims{Expires: exp.Time}
	var ok bool
	if c.Subject, ok = claim(mc, v.cfg.SubjectClaim).(string); !ok || c.Subject == "" {
		return nil, fmt.Errorf("%w: claim %q (the subject) is not a non-empty string", ErrClaims, v.cfg.SubjectClaim)
	}
	if c.Sites, err = stringList(claim(mc, v.cfg.SitesClaim)); err != nil || len(c.Sites) == 0 {
		return nil, fmt.Errorf("%w: claim %q (the sites) is not a non-empty list of strings", ErrClaims, v.cfg.SitesClaim)
	}
	if c.Role, err = v.role(claim(mc, v.cfg.RoleClaim)); err != nil {
		return nil, err
	}
	if jti, present := mc["jti"]; present {
		if c.ID, ok = jti.(string); !ok {
			return nil, fmt.Errorf("%w: jti is not a string", ErrClaims)
		}
	}
	return c, nil
}

// claim finds a claim by its name, or else, for a name with dots, by the
// path through nested objects ("realm_access.roles"). Names such as
// "https://example.org/sites" are found whole first.
func claim(mc jwt.MapClaims, name string) any {
	if v, ok := mc[name]; ok {
		return v
	}
	var cur any = map[string]any(mc)
	for _, part := range strings.Split(name, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		if cur, ok = m[part]; !ok {
			return nil
		}
	}
	return cur
}

// stringList reads an array of strings, or one string of values separated
// by spaces or commas. Absent is an empty list.
func stringList(v any) ([]string, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }), nil
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, errors.New("not a string")
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, errors.New("neither a string nor an array")
}

// role maps the role claim to one of Options.Roles: a string must be one of
// them (or empty, or absent); in an array the highest present counts.
func (v *Verifier) role(raw any) (string, error) {
	if s, ok := raw.(string); ok {
		for _, r := range v.opts.Roles {
			if s == r {
				return r, nil
			}
		}
		if s == "" {
			return "", nil
		}
		return "", fmt.Errorf("%w: claim %q: unknown role %q (want %s)", ErrClaims, v.cfg.RoleClaim, clip(s), strings.Join(v.opts.Roles, " or "))
	}
	list, err := stringList(raw)
	if err != nil {
		return "", fmt.Errorf("%w: claim %q (the role) is neither a string nor an array of strings", ErrClaims, v.cfg.RoleClaim)
	}
	for _, r := range v.opts.Roles {
		for _, s := range list {
			if s == r {
				return r, nil
			}
		}
	}
	return "", nil
}

// clip shortens a claim value for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
