// Command certs manages the deployment's PKI directory (docs/design.md#the-pki-directory): the CAs, the gateway and broker
// certificates, device certificates, the device revocation list, app tokens and their revocation, the client
// certificates of further gateways and their revocation, and the keys and repository of signed firmware updates.
//
//	certs init    --dir DIR [--site SITE] [--gateway-id ID] [--hosts h1,h2] [--key p256|ed25519] [--force]
//	certs device  --dir DIR --id ID [--key p256|ed25519] [--days N]
//	certs devices --dir DIR --count N [--prefix P] [--key p256|ed25519]
//	certs revoke  --dir DIR (--id ID | --gateway ID | --jti JTI | --token JWT)
//	certs factory --dir DIR --count N [--manufacturer NAME] [--prefix P] [--key p256|ed25519] [--days N]
//	certs manufacturer  --dir DIR --name NAME [--key p256|ed25519]
//	certs renew-issuing --dir DIR [--days 90]
//	certs token   --dir DIR --sub NAME --sites S1,S2 [--role operator|clinician] [--ttl 1h]
//	certs gateway --dir DIR --id ID --site SITE [--key p256|ed25519]
//	certs update-init --dir DIR --repo REPO [--key p256|ed25519]
//	certs firmware --dir DIR --repo REPO --image FILE --model M --version V --seq N [--vendor NAME] [--days 90]
//	               [--min-battery N] [--targets id1,id2]
//	certs update-refresh --dir DIR --repo REPO
//
// Every subcommand takes --config FILE, a YAML map whose keys are flag names; flags on the command line win.
// Exit status: 0 on success, 1 on failure, 2 on bad usage, with a one-line reason on stderr.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vitalgate/vitalgate/internal/cli"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/version"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// command is one subcommand: its flags, and the action that runs once they are parsed and checked.
type command struct {
	name, args, summary string
	setup               func(fs *flag.FlagSet) (required []string, action func(stdout io.Writer) error)
}

var commands = []command{
	{"init", "--dir DIR [--site SITE] [--gateway-id ID] [--hosts h1,h2] [--key p256|ed25519] [--force]",
		"write a new PKI directory (refuses to replace an existing CA without --force)", setupInit},
	{"device", "--dir DIR --id ID [--key p256|ed25519] [--days N]", "issue one device certificate", setupDevice},
	{"devices", "--dir DIR --count N [--prefix P] [--key p256|ed25519]",
		"issue a fleet of devices P-00001..P-N, skipping existing ones", setupDevices},
	{"revoke", "--dir DIR (--id ID | --gateway ID | --jti JTI | --token JWT)",
		"revoke a device (crl.pem), a gateway (gateway-crl.pem) or an app token (revoked-tokens)", setupRevoke},
	{"factory", "--dir DIR --count N [--manufacturer NAME] [--prefix P] [--key p256|ed25519] [--days N]",
		"issue factory identities for devices P-00001..P-N and list them in enroll.yaml (tests and the simulator)", setupFactory},
	{"manufacturer", "--dir DIR --name NAME [--key p256|ed25519]",
		"create a manufacturer CA: manufacturers/NAME.crt, its key factory/NAME-ca.key", setupManufacturer},
	{"renew-issuing", "--dir DIR [--days 90]",
		"re-sign issuing-ca.crt with the device CA, keeping its key (run where device-ca.key lives)", setupRenewIssuing},
	{"token", "--dir DIR --sub NAME --sites S1,S2 [--role operator|clinician] [--ttl 1h]",
		"print an app JWT on stdout and its jti (what certs revoke --jti takes) on stderr", setupToken},
	{"gateway", "--dir DIR --id ID --site SITE [--key p256|ed25519]",
		"issue the client certificate of a further gateway: gateways/ID.crt and ID.key", setupGateway},
	{"update-init", "--dir DIR --repo REPO [--key p256|ed25519]",
		"create the update-signing key pair, the TUF role keys, tuf-root.json and the update repository", setupUpdateInit},
	{"firmware", "--dir DIR --repo REPO --image FILE --model M --version V --seq N [--vendor NAME] [--days 90] [--min-battery N] [--targets id1,id2]",
		"sign a firmware manifest and publish image and manifest in the update repository", setupFirmware},
	{"release-key", "--dir DIR", "create the release signing key pair: DIR/release.key (keep it offline) and DIR/release.pub (publish it)", setupReleaseKey},
	{"sign-release", "--key release.key --file SHA256SUMS", "sign a release's checksum file (writes FILE.sig)", setupSignRelease},
	{"verify-release", "--pub release.pub --file SHA256SUMS [--ignore-missing]",
		"check FILE.sig with the release key, then every file FILE lists against its SHA-256", setupVerifyRelease},
	{"update-refresh", "--dir DIR --repo REPO",
		"re-sign the update repository's snapshot and timestamp (the timestamp expires after a day)", setupUpdateRefresh},
}

// usageError marks a bad command line (exit status 2).
type usageError struct{ error }

func mainUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: certs COMMAND [flags]   (certs COMMAND --help for its flags; certs --version)")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-15s %s\n", c.name, c.summary)
	}
}

// run executes the command line args and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		mainUsage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		mainUsage(stdout)
		return 0
	}
	if version.Asked(args) {
		version.Get().Print(stdout, "certs")
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			err := c.run(args[1:], console{stdout, stderr})
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			}
			fmt.Fprintf(stderr, "certs: %s: %s\n", c.name, oneLine(err))
			var ue usageError
			if errors.As(err, &ue) {
				return 2
			}
			return 1
		}
	}
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	fmt.Fprintf(stderr, "certs: unknown command %q (want %s; see certs --help)\n", args[0], strings.Join(names, ", "))
	return 2
}

// oneLine keeps an error message on one line.
func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

// run parses the subcommand's flags (command line, then --config for the flags not given) and runs it.
func (c command) run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("certs "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	config := fs.String("config", "", "YAML `FILE` whose keys are flag names (command-line flags win)")
	required, action := c.setup(fs)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "Usage: certs %s %s\n\n%s.\n\nFlags:\n", c.name, c.args, c.summary)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if *config != "" {
		if err := applyConfig(fs, *config); err != nil {
			return usageError{err}
		}
	}
	for _, name := range required {
		if fs.Lookup(name).Value.String() == "" || fs.Lookup(name).Value.String() == "0" {
			return usageError{fmt.Errorf("--%s is required (see certs %s --help)", name, c.name)}
		}
	}
	return action(stdout)
}

// applyConfig sets, from the YAML map in path, every flag that the command line did not set.
func applyConfig(fs *flag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("config %s: %s", path, oneLine(err))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for key, v := range m {
		f := fs.Lookup(key)
		if f == nil || key == "config" {
			var valid []string
			fs.VisitAll(func(f *flag.Flag) {
				if f.Name != "config" {
					valid = append(valid, f.Name)
				}
			})
			return fmt.Errorf("config %s: %w", path, cli.UnknownKey(key, valid))
		}
		if set[key] {
			continue
		}
		var s string
		switch v := v.(type) {
		case []any:
			parts := make([]string, len(v))
			for i, e := range v {
				parts[i] = fmt.Sprint(e)
			}
			s = strings.Join(parts, ",")
		case nil:
			continue
		case map[string]any:
			return fmt.Errorf("config %s: key %q: want a value, not a map", path, key)
		default:
			s = fmt.Sprint(v)
		}
		if err := fs.Set(key, s); err != nil {
			return fmt.Errorf("config %s: key %q: %s", path, key, oneLine(err))
		}
	}
	return nil
}

// list splits a comma-separated flag value, dropping empty items.
func list(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// keyFlag registers --key.
func keyFlag(fs *flag.FlagSet) *string {
	return fs.String("key", string(pki.P256), "key algorithm: p256 or ed25519")
}

func setupInit(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "PKI `directory` to write")
	site := fs.String("site", pki.DefaultSite, "the gateway's `SITE` (OU of gateway-client.crt)")
	gw := fs.String("gateway-id", pki.DefaultGatewayID, "the gateway's `ID` (CN of gateway-client.crt)")
	hosts := fs.String("hosts", "", "extra host names or IPs of gateway.crt and broker.crt, comma-separated (localhost, 127.0.0.1 and ::1 are always there)")
	key := keyFlag(fs)
	force := fs.Bool("force", false, "replace an existing CA (removes the device certificates it issued)")
	return []string{"dir"}, func(w io.Writer) error {
		alg, err := pki.ParseKeyAlg(*key)
		if err != nil {
			return usageError{err}
		}
		if err := pki.Init(*dir, pki.InitOptions{Site: *site, GatewayID: *gw, Hosts: list(*hosts), Key: alg, Force: *force}); err != nil {
			return err
		}
		fmt.Fprintf(w, "wrote %s (site %s, gateway %s, %s keys)\n", *dir, *site, *gw, alg)
		return nil
	}
}

func setupDevice(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "PKI `directory`")
	id := fs.String("id", "", "device `ID` ([A-Za-z0-9._-]{1,64}, not . or ..), the certificate's CN")
	key := keyFlag(fs)
	days := fs.Int("days", 365, "validity in days")
	return []string{"dir", "id"}, func(w io.Writer) error {
		alg, err := pki.ParseKeyAlg(*key)
		if err != nil {
			return usageError{err}
		}
		if *days < 1 {
			return usageError{fmt.Errorf("--days %d: want at least 1", *days)}
		}
		if err := pki.IssueDevice(*dir, *id, alg, *days); err != nil {
			return err
		}
		certFile, keyFile := pki.DevicePaths(*dir, *id)
		fmt.Fprintf(w, "%s\n%s\n", certFile, keyFile)
		return nil
	}
}

func setupDevices(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "PKI `directory`")
	count := fs.Int("count", 0, "number of devices")
	prefix := fs.String("prefix", pki.DefaultDevicePrefix, "device ID prefix: IDs are `P`-00001, P-00002, ...")
	key := keyFlag(fs)
	return []string{"dir", "count"}, func(w io.Writer) error {
		alg, err := pki.ParseKeyAlg(*key)
		if err != nil {
			return usageError{err}
		}
		start := time.Now()
		res, err := pki.IssueBulk(*dir, pki.BulkOptions{Count: *count, Prefix: *prefix, Key: alg})
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%d devices %s-%05d..%s: %d issued, %d existed, in %s\n", len(res.IDs), *prefix, 1,
			res.IDs[len(res.IDs)-1], res.Issued, res.Skipped, time.Since(start).Round(time.Millisecond))
		return nil
	}
}

func setupRevoke(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "PKI `directory`")
	id := fs.String("id", "", "device `ID` to revoke (into crl.pem)")
	gw := fs.String("gateway", "", "gateway `ID` to revoke (into gateway-crl.pem): gateway-client.crt when its CN is ID, and gateways/ID.crt")
	jti := fs.String("jti", "", "app token `ID` to revoke (into revoked-tokens), as certs token printed it")
	token := fs.String("token", "", "app `JWT` to revoke: its jti is read after its signature is checked")
	return []string{"dir"}, func(w io.Writer) error {
		given := 0
		for _, v := range []string{*id, *gw, *jti, *token} {
			if v != "" {
				given++
			}
		}
		if given != 1 {
			return usageError{errors.New("give exactly one of --id, --gateway, --jti and --token (see certs revoke --help)")}
		}
		switch {
		case *id != "":
			return revokeDevice(w, *dir, *id)
		case *gw != "":
			if err := pki.RevokeGateway(*dir, *gw); err != nil {
				return err
			}
			fmt.Fprintf(w, "revoked gateway %s in %s\n", *gw, filepath.Join(*dir, pki.FileGatewayCRL))
		default:
			return revokeToken(w, *dir, *jti, *token)
		}
		return nil
	}
}

// revokeToken adds an app token's jti (given, or read from the checked token) to revoked-tokens.
func revokeToken(w io.Writer, dir, jti, token string) error {
	if token != "" {
		var err error
		if jti, err = pki.TokenIDOf(dir, token); err != nil {
			return err
		}
	}
	if err := pki.RevokeToken(dir, jti); err != nil {
		return err
	}
	fmt.Fprintf(w, "revoked token %s in %s\n", jti, filepath.Join(dir, pki.FileRevokedTokens))
	return nil
}

func setupToken(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "PKI `directory` (signs with app-token.key)")
	sub := fs.String("sub", "", "subject: the app's `NAME`")
	sites := fs.String("sites", "", "sites the app may read, comma-separated")
	ttl := fs.Duration("ttl", time.Hour, "lifetime of the token")
	role := fs.String("role", "", "the claim `role`: clinician (reads telemetry, fhir, gateways and certs) or operator (also security, jobs and inventory, and publishes rollout jobs); none is a clinician")
	return []string{"dir", "sub", "sites"}, func(w io.Writer) error {
		tok, err := pki.MintRoleToken(*dir, *sub, *role, list(*sites), *ttl)
		if err != nil {
			return err
		}
		jti, err := pki.TokenIDOf(*dir, tok)
		if err != nil {
			return err
		}
		fmt.Fprintln(w, tok)
		fmt.Fprintf(notes(w), "jti %s\n", jti)
		return nil
	}
}

func setupGateway(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "PKI `directory` (signs with gateway-ca.key)")
	id := fs.String("id", "", "gateway `ID`, the certificate's CN and the gateway's MQTT client ID at the cloud")
	site := fs.String("site", "", "the gateway's `SITE`, the certificate's OU: the topics it may publish under")
	key := keyFlag(fs)
	return []string{"dir", "id", "site"}, func(w io.Writer) error {
		alg, err := pki.ParseKeyAlg(*key)
		if err != nil {
			return usageError{err}
		}
		if err := pki.IssueGateway(*dir, *id, *site, alg); err != nil {
			return err
		}
		certFile, keyFile := pki.GatewayPaths(*dir, *id)
		fmt.Fprintf(w, "%s\n%s\n", certFile, keyFile)
		return nil
	}
}

// console is the stdout an action writes its result to, carrying the stderr for notes beside it.
type console struct {
	io.Writer           // stdout
	stderr    io.Writer // notes
}

// notes returns the stderr of w when w is a console, else io.Discard.
func notes(w io.Writer) io.Writer {
	if c, ok := w.(console); ok {
		return c.stderr
	}
	return io.Discard
}

// revokeDevice puts a device on crl.pem (devices/ID.crt) and its enrolled certificates (issued/ID.pem) on
// issuing-crl.pem, and says what went where.
func revokeDevice(w io.Writer, dir, id string) error {
	r, err := pki.RevokeDevice(dir, id)
	if err != nil {
		return err
	}
	var where []string
	if r.DeviceCert {
		where = append(where, "its certificate in "+filepath.Join(dir, pki.FileCRL))
	}
	if r.Issued > 0 {
		where = append(where, fmt.Sprintf("%s in %s", plural(r.Issued, "enrolled certificate", "enrolled certificates"), filepath.Join(dir, pki.FileIssuingCRL)))
	}
	fmt.Fprintf(w, "revoked %s: %s\n", id, strings.Join(where, ", "))
	return nil
}

// plural words n things: "1 thing", "2 things".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
