package jointoken

import (
	"crypto/tls"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/duet-net/duet/internal/pki"
)

func TestParse(t *testing.T) {
	hash := strings.Repeat("ab", 32)
	secret := strings.Repeat("x", 43)
	for _, tc := range []struct {
		name, in, wantErr string
	}{
		{"a token as servers write it", Version + ":" + hash + ":" + secret + "\n", ""},
		{"two fields", Version + ":" + hash, "colon-separated fields"},
		{"a colon in the secret", Version + ":" + hash + ":" + secret + ":x", "colon-separated"},
		{"another version", "duet2:" + hash + ":" + secret, `unknown version "duet2"`},
		{"a short hash", Version + ":abcd:" + secret, "64 hex digits, got 4"},
		{"a hash that is not hex", Version + ":" + strings.Repeat("zz", 32) + ":" + secret, "not hex"},
		{"a short secret", Version + ":" + hash + ":abc", "22 to 256 characters, got 3"},
		{"a secret with a space", Version + ":" + hash + ":" + strings.Repeat("x", 30) + " y", "only letters"},
		{"empty", "", "colon-separated fields"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := Parse(tc.in)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if tok.Secret != secret || tok.String() != strings.TrimSpace(tc.in) {
					t.Errorf("Parse(%q) = %+v, String %q", tc.in, tok, tok.String())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Parse(%q) error %v, want one containing %q", tc.in, err, tc.wantErr)
			}
		})
	}
}

func TestNewSecretRoundTrips(t *testing.T) {
	s, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	tok := New([]byte("ca"), s)
	back, err := Parse(tok.String())
	if err != nil || back != tok {
		t.Fatalf("Parse(String()) = %+v, %v; want %+v", back, err, tok)
	}
	if !SecretMatches(s, back.Secret) || SecretMatches(s[:len(s)-1]+"!", back.Secret) || SecretMatches(s[1:], s) {
		t.Error("SecretMatches compares wrongly")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Version + ":" + strings.Repeat("0", 64) + ":" + strings.Repeat("a", 43))
	f.Add("duet1::")
	f.Add(":::")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			return
		}
		back, err := Parse(tok.String())
		if err != nil || back != tok {
			t.Fatalf("Parse(%q) = %+v, but its String %q parses to %+v, %v", s, tok, tok.String(), back, err)
		}
	})
}

// TestTLSConfigTrustsOnlyThePinnedCA: a server sending its chain with the
// token's CA is trusted; one of another CA, or one that does not send the
// CA, is refused.
func TestTLSConfigTrustsOnlyThePinnedCA(t *testing.T) {
	serve := func(ca *pki.CA, withChain bool) *httptest.Server {
		pair, err := ca.Issue("server", nil, []string{"127.0.0.1"}, true)
		if err != nil {
			t.Fatal(err)
		}
		certPEM := pair.CertPEM
		if withChain {
			certPEM = append(append([]byte{}, certPEM...), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})...)
		}
		cert, err := tls.X509KeyPair(certPEM, pair.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv
	}
	mine, err := pki.LoadOrCreateCA(t.TempDir(), "mine")
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.LoadOrCreateCA(t.TempDir(), "other")
	if err != nil {
		t.Fatal(err)
	}
	tok := New(mine.Cert.Raw, strings.Repeat("s", 43))
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tok.TLSConfig()}}
	for _, tc := range []struct {
		name string
		srv  *httptest.Server
		ok   bool
	}{
		{"the cluster's server", serve(mine, true), true},
		{"a server of another CA", serve(other, true), false},
		{"the cluster's server without the CA in its chain", serve(mine, false), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := client.Get(tc.srv.URL)
			if err == nil {
				resp.Body.Close()
			}
			if tc.ok && err != nil {
				t.Fatalf("GET: %v", err)
			}
			if !tc.ok && (err == nil || !errors.Is(err, ErrCAMismatch) && !strings.Contains(err.Error(), ErrCAMismatch.Error())) {
				t.Fatalf("GET: %v, want %v", err, ErrCAMismatch)
			}
		})
	}
}
