// Package roottest is what Duet's tests that need root share: the policy that
// decides whether such a test runs, is skipped or fails; named network
// namespaces that go away with the test; running code and commands in them;
// and polling for a condition instead of sleeping.
//
// The policy: as root, root tests run. Without root they are skipped with a
// message, so a contributor's plain `go test ./...` runs every other test;
// but when RequireEnv is set (make test sets it), a missing root or tool is
// a failure, so that CI never passes by skipping.
package roottest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/duet-net/duet/internal/netns"
)

// RequireEnv, set to any value, turns the skips of Require into failures.
const RequireEnv = "DUET_TEST_REQUIRE_ROOT"

// Require skips (or, under RequireEnv, fails) the test unless it runs as root
// and every named command is on PATH.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	miss := missing(os.Geteuid(), tools, exec.LookPath)
	if miss == "" {
		return
	}
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("%s (%s is set: root tests must run; make test installs the tools and runs as root)", miss, RequireEnv)
	}
	t.Skipf("%s: skipped; run as root (make test) to include it", miss)
}

// missing says what keeps a root test from running, or "" if nothing does.
func missing(euid int, tools []string, lookPath func(string) (string, error)) string {
	if euid != 0 {
		return "needs root (network namespaces, mounts, nftables)"
	}
	var lack []string
	for _, tool := range tools {
		if _, err := lookPath(tool); err != nil {
			lack = append(lack, tool)
		}
	}
	if len(lack) > 0 {
		return "needs " + strings.Join(lack, ", ") + " on PATH"
	}
	return ""
}

// RunTag tells this test process's namespaces from those of test runs beside
// it (packages run in parallel, and CI may run on a busy machine).
var RunTag = func() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%d%s", os.Getpid()%100000, hex.EncodeToString(b))
}()

var seq atomic.Int64

// NetNS makes a named network namespace, with lo up, called
// prefix + RunTag + "-" + a sequence number + "-" + role, and removes it when
// the test ends. Interface names inside it are the test's own business.
func NetNS(t testing.TB, prefix, role string) string {
	t.Helper()
	Require(t)
	name := fmt.Sprintf("%s%s-%d-%s", prefix, RunTag, seq.Add(1), role)
	ns, err := netns.Create(netns.Path(name), netns.Prep{})
	if err != nil {
		t.Fatalf("making network namespace %s: %v", name, err)
	}
	ns.Close()
	t.Cleanup(func() {
		if err := netns.Remove(netns.Path(name)); err != nil {
			t.Errorf("removing network namespace %s: %v", name, err)
		}
	})
	return name
}

// Do runs fn inside the named network namespace (see netns.Do), failing the
// test on error.
func Do(t testing.TB, name string, fn func() error) {
	t.Helper()
	if err := netns.Do(netns.Path(name), fn); err != nil {
		t.Fatalf("in network namespace %s: %v", name, err)
	}
}

// Run runs a command and returns its combined output, failing the test if it
// fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// RunIn runs a command inside the named network namespace (ip netns exec).
func RunIn(t testing.TB, ns, name string, args ...string) string {
	t.Helper()
	return Run(t, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Leftovers lists the namespaces of this test process whose names start with
// prefix, for a TestMain to fail the run when a test left one behind.
func Leftovers(prefix string) ([]string, error) {
	names, err := netns.List()
	if err != nil {
		return nil, err
	}
	var left []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix+RunTag+"-") {
			left = append(left, n)
		}
	}
	return left, nil
}

// Eventually polls f until it returns nil, failing the test with f's last
// error if that does not happen within timeout. It polls often at first and
// then every 250 ms, so quick conditions cost little and slow ones little CPU.
func Eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	if err := Poll(timeout, f); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// Poll is Eventually without a test: it returns nil once f does, or an error
// wrapping f's last one after timeout.
func Poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	wait := 5 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s: %w", timeout, err)
		}
		time.Sleep(wait) // polling interval, not synchronisation: the condition decides
		wait = min(2*wait, 250*time.Millisecond)
	}
}

// ErrNotYet is a convenience for conditions that have nothing better to say.
var ErrNotYet = errors.New("not yet")
