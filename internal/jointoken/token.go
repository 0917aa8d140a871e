// Package jointoken is the credential a new `duet server --join` presents
// to a running one: the cluster CA's fingerprint, so that the new server
// can trust the server it joins before it holds the CA, and a secret
// shared by the cluster's servers, which proves it may join.
package jointoken

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Version begins every token, so that a later format can be told apart.
const Version = "duet1"

// Secret lengths, in characters of base64url.
const (
	minSecret = 22 // 128 bits
	maxSecret = 256
)

// Token is a parsed join token.
type Token struct {
	// CAHash is the SHA-256 of the cluster CA certificate (DER).
	CAHash [sha256.Size]byte
	// Secret is what the joining server sends as its bearer token.
	Secret string
}

// New makes the token of a cluster whose CA is caDER.
func New(caDER []byte, secret string) Token {
	return Token{CAHash: sha256.Sum256(caDER), Secret: secret}
}

// NewSecret returns 256 random bits, base64url-encoded.
func NewSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generating the join secret: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// String is the token's text form, VERSION:CAHASH:SECRET.
func (t Token) String() string {
	return Version + ":" + hex.EncodeToString(t.CAHash[:]) + ":" + t.Secret
}

// Parse reads a token's text form; surrounding white space (a file's
// trailing newline) is ignored.
func Parse(s string) (Token, error) {
	s = strings.TrimSpace(s)
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return Token{}, fmt.Errorf("join token: want %s:CA-SHA256:SECRET, got %d colon-separated fields", Version, len(parts))
	}
	if parts[0] != Version {
		return Token{}, fmt.Errorf("join token: unknown version %q, want %s", trim(parts[0]), Version)
	}
	var t Token
	if len(parts[1]) != 2*sha256.Size {
		return Token{}, fmt.Errorf("join token: the CA hash must be %d hex digits, got %d", 2*sha256.Size, len(parts[1]))
	}
	if _, err := hex.Decode(t.CAHash[:], []byte(parts[1])); err != nil {
		return Token{}, fmt.Errorf("join token: the CA hash is not hex: %w", err)
	}
	if err := checkSecret(parts[2]); err != nil {
		return Token{}, err
	}
	t.Secret = parts[2]
	return t, nil
}

func checkSecret(s string) error {
	if len(s) < minSecret || len(s) > maxSecret {
		return fmt.Errorf("join token: the secret must be %d to %d characters, got %d", minSecret, maxSecret, len(s))
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("join token: the secret holds %q; only letters, digits, - and _ are allowed", c)
		}
	}
	return nil
}

func trim(s string) string {
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}

// ReadFile reads a token from a file.
func ReadFile(path string) (Token, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Token{}, fmt.Errorf("reading the join token: %w", err)
	}
	t, err := Parse(string(data))
	if err != nil {
		return Token{}, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// WriteFile writes the token, readable by its owner only.
func WriteFile(path string, t Token) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(t.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("writing the join token: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing the join token: %w", err)
	}
	return nil
}

// SecretMatches compares a presented secret with the cluster's in
// constant time.
func SecretMatches(presented, secret string) bool {
	return len(presented) == len(secret) && subtle.ConstantTimeCompare([]byte(presented), []byte(secret)) == 1
}

// ErrCAMismatch means the server presented no certificate chain that ends
// in the CA the token names: it is not of the cluster, or a
// man-in-the-middle.
var ErrCAMismatch = errors.New("the server's certificate is not signed by the cluster CA the join token names")

// TLSConfig trusts exactly the servers whose certificate is signed by the
// CA the token names. The server must send that CA in its chain (duet
// servers do): the token holds only its hash.
func (t Token) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verified below against the pinned CA instead of the system's.
		InsecureSkipVerify: true, //nolint:gosec
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return t.verify(raw)
		},
	}
}

func (t Token) verify(raw [][]byte) error {
	if len(raw) == 0 {
		return ErrCAMismatch
	}
	var ca *x509.Certificate
	for _, der := range raw[1:] {
		if sha256.Sum256(der) == t.CAHash {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return fmt.Errorf("parsing the cluster CA the server sent: %w", err)
			}
			ca = c
		}
	}
	if ca == nil {
		return ErrCAMismatch
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return fmt.Errorf("parsing the server's certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("%w: %v", ErrCAMismatch, err)
	}
	return nil
}
