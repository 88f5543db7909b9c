package pki

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/vitalgate/vitalgate/internal/fileerr"
)

// MaxRevokedTokensSize bounds the revoked-tokens file: 1 MiB, some 30,000 token IDs.
const MaxRevokedTokensSize = 1 << 20

// maxTokenIDLen bounds one token ID (jti) in the revoked-tokens file and in a token.
const maxTokenIDLen = 128

// ValidTokenID reports whether s can be a token ID (jti) on the revoked-tokens list: 1 to 128 printable ASCII
// characters without spaces or '#'. [MintToken] writes 32 lowercase hex digits.
func ValidTokenID(s string) bool {
	if len(s) == 0 || len(s) > maxTokenIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return false
		}
	}
	return true
}

// ReadRevokedTokens reads a revoked-tokens file: one token ID (jti) a line, '#' comments and blank lines
// ignored. A missing file is an empty list. A file over [MaxRevokedTokensSize] or a line that is not a token ID
// is an error naming the file and the line: a caller keeps its previous list rather than an empty one.
func ReadRevokedTokens(path string) (map[string]struct{}, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]struct{}{}, nil
	}
	if err != nil {
		return nil, fileerr.Wrap("read revoked tokens", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxRevokedTokensSize+1))
	if err != nil {
		return nil, fileerr.Wrap("read revoked tokens", path, err)
	}
	return parseRevokedTokens(path, data)
}

// parseRevokedTokens parses the content of the revoked-tokens file path.
func parseRevokedTokens(path string, data []byte) (map[string]struct{}, error) {
	if len(data) > MaxRevokedTokensSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, MaxRevokedTokensSize)
	}
	ids := map[string]struct{}{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), MaxRevokedTokensSize+1)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !ValidTokenID(line) {
			return nil, fmt.Errorf("%s:%d: not a token ID (want one jti a line: 1 to %d printable characters, no spaces)",
				path, n, maxTokenIDLen)
		}
		ids[line] = struct{}{}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ids, nil
}

// RevokeToken adds the token ID jti to the revoked-tokens file of the PKI directory dir, under the directory's
// writer lock ([LockDir]), replacing the file atomically. Revoking a token twice is not an error (the file is
// unchanged). It refuses an invalid ID, a file that does not parse, and a file that would outgrow
// [MaxRevokedTokensSize].
func RevokeToken(dir, jti string) error {
	if !ValidTokenID(jti) {
		return fmt.Errorf("invalid token ID %q (want 1 to %d printable characters, no spaces or #)", jti, maxTokenIDLen)
	}
	release, err := LockDir(dir)
	if err != nil {
		return err
	}
	defer release()
	path := filepath.Join(dir, FileRevokedTokens)
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fileerr.Wrap("read revoked tokens", path, err)
	}
	ids, err := parseRevokedTokens(path, data)
	if err != nil {
		return err
	}
	if _, ok := ids[jti]; ok {
		return nil
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		data = append(data, '\n')
	}
	data = append(data, jti+"\n"...)
	if len(data) > MaxRevokedTokensSize {
		return fmt.Errorf("%s: full (%d bytes at most): remove the IDs of tokens that have expired", path, MaxRevokedTokensSize)
	}
	return writeFile(path, data, 0o644, true)
}

// TokenIDOf checks token's signature and claims against the app-token key of the PKI directory dir and returns
// its ID (jti); a token without one is an error (it can never be revoked, and the cloud broker refuses it).
func TokenIDOf(dir, token string) (string, error) {
	pub, err := LoadTokenKey(filepath.Join(dir, FileAppTokenPub))
	if err != nil {
		return "", fmt.Errorf("token key: %w", err)
	}
	c, err := VerifyToken(pub, token)
	if err != nil {
		return "", err
	}
	if c.ID == "" {
		return "", errors.New("token has no jti: it cannot be revoked (rotate app-token.key to retire such tokens)")
	}
	return c.ID, nil
}
