package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

var (
	agnhostOnce sync.Once
	agnhostErr  error
)

// Agnhost makes upstream's agnhost test binary available to the pods of
// clusters the tests start: it builds it (from k8s.io/kubernetes, in the
// module test/upstream, as `make agnhost` does) beside Bin, where the
// agents' built-in image table looks for it. It is built once per test
// process; the Go build cache makes it quick after the first time.
func Agnhost(t testing.TB) {
	t.Helper()
	agnhostOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			agnhostErr = err
			return
		}
		out := filepath.Join(filepath.Dir(Bin), "agnhost")
		if _, err := os.Stat(out); err == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		start := time.Now()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "k8s.io/kubernetes/test/images/agnhost")
		cmd.Dir = filepath.Join(root, "test", "upstream")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			agnhostErr = fmt.Errorf("building agnhost in %s: %w", cmd.Dir, err)
			return
		}
		if testing.Verbose() {
			fmt.Fprintf(os.Stderr, "built %s in %v\n", out, time.Since(start).Round(time.Millisecond))
		}
	})
	if agnhostErr != nil {
		t.Fatal(agnhostErr)
	}
}
