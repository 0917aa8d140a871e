// Package integration starts real `duet server` processes and drives them
// with client-go and with the machine's kubectl.
//
// TestMain builds bin/duet once into a temporary directory; StartServer runs
// it on a t.TempDir() data dir with --secure-port 0 and stops it when the
// test ends. Benchmarks (go test -bench) live in bench_test.go.
package integration

import (
	"context"
	"io"
	"os"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/testutil/roottest"
	"github.com/duet-net/duet/test/harness"
)

// The harness lives in test/harness, shared with the e2e tests; these names
// keep the tests here short.
type (
	ServerOptions = harness.ServerOptions
	Server        = harness.Server
)

var (
	StartServer  = harness.StartServer
	NewServer    = harness.NewServer
	Kubectl      = harness.Kubectl
	startProcess = harness.StartProcess
	exitStatus   = harness.ExitStatus
)

const (
	startTimeout = harness.StartTimeout
	stopTimeout  = harness.StopTimeout
)

func TestMain(m *testing.M) {
	// client-go logs every broken connection of the kill -9 test; the
	// tests report what matters themselves.
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	os.Exit(harness.Main(m, "integration"))
}

// eventually polls f until it returns nil, failing the test with f's last
// error when timeout passes. It is for state that converges (controllers,
// the repair loop), never for ordering.
func eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	roottest.Eventually(t, timeout, what, f)
}

// ctxT is a context for one test step.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
