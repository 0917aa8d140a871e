package streaming

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexecclient "k8s.io/client-go/util/exec"
	utilexec "k8s.io/utils/exec"

	"github.com/duet-net/duet/internal/pki"
)

// fakeRuntime serves one pod, default/p, with one container, c, whose
// log is a file; exec runs no process: it echoes stdin and exits with the
// code given as its first argument.
type fakeRuntime struct {
	logPath string
}

func (f *fakeRuntime) Check(pod PodRef, container string) error {
	if pod != (PodRef{"default", "p"}) {
		return NotFound("pod %s is not running on node n", pod)
	}
	if container != "" && container != "c" {
		return NotFound("container %q not found in pod %s", container, pod)
	}
	return nil
}

func (f *fakeRuntime) Exec(_ context.Context, c ContainerRef, cmd []string, s Streams) error {
	if s.In != nil && s.Out != nil {
		if _, err := io.Copy(s.Out, s.In); err != nil {
			return err
		}
	}
	if s.Err != nil {
		fmt.Fprintf(s.Err, "ran %v in %s", cmd, c.Container)
	}
	var code int
	if _, err := fmt.Sscan(cmd[0], &code); err == nil && code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("exit %d", code), Code: code}
	}
	return nil
}

func (f *fakeRuntime) Attach(context.Context, ContainerRef, Streams) error {
	return errors.New("not in this test")
}

func (f *fakeRuntime) PortForward(context.Context, PodRef, int32, io.ReadWriteCloser) error {
	return errors.New("not in this test")
}

func (f *fakeRuntime) LogFile(c ContainerRef, previous bool) (LogFile, error) {
	if err := f.Check(c.PodRef, c.Container); err != nil {
		return LogFile{}, err
	}
	if previous {
		return LogFile{}, BadRequest("previous terminated container %q in pod %s not found", c.Container, c.PodRef)
	}
	return LogFile{Path: f.logPath}, nil
}

// testAgent is an agent's server on loopback with credentials from a
// fresh cluster CA.
type testAgent struct {
	url  string
	ca   *pki.CA
	pool *x509.CertPool
}

func startAgent(t *testing.T) *testAgent {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(dir, "test-ca")
	if err != nil {
		t.Fatal(err)
	}
	serving, err := ca.Issue("agent", nil, []string{"127.0.0.1"}, true)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "agent.crt"), filepath.Join(dir, "agent.key")
	if err := serving.WriteFiles(cert, key); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "0.log")
	if err := os.WriteFile(logPath, []byte("2026-01-02T03:04:05.000000000Z stdout F hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	srv, err := Listen(Config{Addr: "127.0.0.1:0", CertFile: cert, KeyFile: key, ClientCAs: pool, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv.Serve(ctx, &fakeRuntime{logPath: logPath})
	return &testAgent{url: "https://" + srv.Addr().String(), ca: ca, pool: pool}
}

// client is an HTTPS client with the given client certificate (none if
// user is "") from ca.
func (a *testAgent) client(t *testing.T, ca *pki.CA, user string, groups ...string) *http.Client {
	t.Helper()
	cfg := &tls.Config{RootCAs: a.pool}
	if user != "" {
		pair, err := ca.Issue(user, groups, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		// Presented whatever CAs the server names as acceptable.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
}

func TestOnlyTheAPIServerIsServed(t *testing.T) {
	a := startAgent(t)
	other, err := pki.LoadOrCreateCA(t.TempDir(), "another-ca")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		ca     *pki.CA
		user   string
		groups []string
		code   int // 0: the handshake fails
		body   string
	}{
		{"the API server's agent client", a.ca, pki.AgentClientUser, nil, http.StatusOK, "hello\n"},
		{"no client certificate", a.ca, "", nil, http.StatusUnauthorized, "Unauthorized"},
		{"a node's own identity", a.ca, "system:node:n", []string{"system:nodes"}, http.StatusForbidden, `user "system:node:n" may not use the agent's API`},
		{"an administrator", a.ca, "duet-admin", []string{"system:masters"}, http.StatusForbidden, `user "duet-admin" may not`},
		{"the agent client name from another CA", other, pki.AgentClientUser, nil, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := a.client(t, tc.ca, tc.user, tc.groups...).Get(a.url + "/containerLogs/default/p/c")
			if tc.code == 0 {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("a certificate of another CA got through: %s", resp.Status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.body) {
				t.Errorf("%d %q, want %d with %q", resp.StatusCode, body, tc.code, tc.body)
			}
		})
	}
	// Health checks need no identity.
	resp, err := a.client(t, a.ca, "").Get(a.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %s", resp.Status)
	}
}

func TestRequestErrors(t *testing.T) {
	a := startAgent(t)
	c := a.client(t, a.ca, pki.AgentClientUser)
	for _, tc := range []struct {
		path string
		code int
		body string
	}{
		{"/containerLogs/default/gone/c", http.StatusNotFound, "pod default/gone is not running on node n"},
		{"/containerLogs/default/p/x", http.StatusNotFound, `container "x" not found in pod default/p`},
		{"/containerLogs/default/p/c?previous=true", http.StatusBadRequest, "previous terminated container"},
		{"/containerLogs/default/p/c?tailLines=x", http.StatusBadRequest, `tailLines="x": not an integer`},
		{"/exec/default/p/c?output=1", http.StatusBadRequest, "no command given"},
		{"/exec/default/p/c?command=ls", http.StatusBadRequest, "at least 1 of stdin, stdout, stderr"},
		{"/exec/default/p/x?command=ls&output=1", http.StatusNotFound, `container "x" not found`},
		{"/portforward/default/gone", http.StatusNotFound, "pod default/gone is not running"},
		{"/nothing/here", http.StatusNotFound, ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := c.Get(a.url + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.body) || strings.HasSuffix(string(body), "\n") && tc.body != "" {
				t.Errorf("%d %q, want %d with %q (and no trailing newline)", resp.StatusCode, body, tc.code, tc.body)
			}
		})
	}
}

// TestExecOverSPDY drives the agent as the API server does, with
// client-go's SPDY executor: streams, and the exit code as an error.
func TestExecOverSPDY(t *testing.T) {
	a := startAgent(t)
	pair, err := a.ca.AgentClient()
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _, err := a.ca.PEM()
	if err != nil {
		t.Fatal(err)
	}
	cfg := &rest.Config{TLSClientConfig: rest.TLSClientConfig{CertData: pair.CertPEM, KeyData: pair.KeyPEM, CAData: caPEM}}
	for _, tc := range []struct {
		arg  string
		code int
	}{{"0", 0}, {"3", 3}} {
		u, _ := url.Parse(a.url + "/exec/default/p/c?" + url.Values{"command": {tc.arg}, "input": {"1"}, "output": {"1"}, "error": {"1"}}.Encode())
		e, err := remotecommand.NewSPDYExecutor(cfg, "POST", u)
		if err != nil {
			t.Fatal(err)
		}
		var out, errb bytes.Buffer
		err = e.StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdin: strings.NewReader("echoed"), Stdout: &out, Stderr: &errb})
		var exit utilexecclient.CodeExitError
		switch {
		case tc.code == 0 && err != nil:
			t.Errorf("exit 0: %v", err)
		case tc.code != 0 && (!errors.As(err, &exit) || exit.Code != tc.code):
			t.Errorf("exit %d: got %v", tc.code, err)
		}
		if out.String() != "echoed" || errb.String() != "ran ["+tc.arg+"] in c" {
			t.Errorf("stdout %q, stderr %q", out.String(), errb.String())
		}
	}
}

func TestParseLogOptions(t *testing.T) {
	for _, tc := range []struct {
		query, want, err string
	}{
		{"", "{}", ""},
		{"follow=true&previous=1&timestamps=true&tailLines=0&limitBytes=5&sinceSeconds=9", "follow previous timestamps tail=0 limit=5 since=9s", ""},
		{"sinceTime=2026-01-02T03:04:05Z", "sinceTime=2026-01-02T03:04:05Z", ""},
		{"follow=yes", "", `follow="yes": not a boolean`},
		{"tailLines=-1", "", "tailLines=-1: must be at least 0"},
		{"limitBytes=0", "", "limitBytes=0: must be at least 1"},
		{"sinceSeconds=0", "", "sinceSeconds=0: must be at least 1"},
		{"sinceTime=yesterday", "", `sinceTime="yesterday": not an RFC 3339 time`},
		{"sinceSeconds=1&sinceTime=2026-01-02T03:04:05Z", "", "at most one"},
		{"tailLines=%zz", "", "query"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			o, err := ParseLogOptions(tc.query)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for name, on := range map[string]bool{"follow": o.Follow, "previous": o.Previous, "timestamps": o.Timestamps} {
				if on {
					got = append(got, name)
				}
			}
			if o.TailLines != nil {
				got = append(got, fmt.Sprintf("tail=%d", *o.TailLines))
			}
			if o.LimitBytes != nil {
				got = append(got, fmt.Sprintf("limit=%d", *o.LimitBytes))
			}
			if o.SinceSeconds != nil {
				got = append(got, fmt.Sprintf("since=%ds", *o.SinceSeconds))
			}
			if o.SinceTime != nil {
				got = append(got, "sinceTime="+o.SinceTime.UTC().Format(time.RFC3339))
			}
			want := sets.New(strings.Fields(tc.want)...)
			if tc.want == "{}" {
				want = sets.New[string]()
			}
			if !want.Equal(sets.New(got...)) {
				t.Errorf("got %v, want %v", got, sets.List(want))
			}
		})
	}
}

// FuzzParseLogOptions: any query either parses into options within
// PodLogOptions' rules or is refused with an error naming a parameter.
func FuzzParseLogOptions(f *testing.F) {
	for _, s := range []string{"", "follow=true&tailLines=10", "sinceTime=2026-01-02T03:04:05Z", "limitBytes=-1", "a=%", "tailLines=1&tailLines=2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		o, err := ParseLogOptions(q)
		if err != nil {
			return
		}
		if o.TailLines != nil && *o.TailLines < 0 || o.LimitBytes != nil && *o.LimitBytes < 1 || o.SinceSeconds != nil && *o.SinceSeconds < 1 || o.SinceSeconds != nil && o.SinceTime != nil {
			t.Errorf("%q parsed into options against the rules: %+v", q, o)
		}
	})
}
