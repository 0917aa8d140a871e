package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/duet-net/duet/test/harness"
)

// TestServerFlagErrors: bad cluster configuration makes `duet server` exit
// non-zero before it starts anything (no etcd, no kubeconfig), with
// Kubernetes' messages.
func TestServerFlagErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		want []string // every one must be in the output
	}{
		{"dual-stack ranges with IPv6DualStack=false",
			[]string{"--service-cluster-ip-range", "10.96.0.0/16,fd00:10:96::/108", "--feature-gates", "IPv6DualStack=false"},
			[]string{"--service-cluster-ip-range", "IPv6DualStack"}},
		{"dual-stack cluster CIDRs with IPv6DualStack=false",
			[]string{"--service-cluster-ip-range", "10.96.0.0/16", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56", "--feature-gates", "IPv6DualStack=false"},
			[]string{"--cluster-cidr", "IPv6DualStack"}},
		{"two IPv4 service ranges",
			[]string{"--service-cluster-ip-range", "10.96.0.0/16,10.97.0.0/16"},
			[]string{"--service-cluster-ip-range[0] and --service-cluster-ip-range[1] must be of different IP family"}},
		{"two IPv6 service ranges",
			[]string{"--service-cluster-ip-range", "fd00:1::/108,fd00:2::/108"},
			[]string{"--service-cluster-ip-range[0] and --service-cluster-ip-range[1] must be of different IP family"}},
		{"three service ranges",
			[]string{"--service-cluster-ip-range", "10.96.0.0/16,fd00:10:96::/108,10.97.0.0/16"},
			[]string{"--service-cluster-ip-range must not contain more than two entries"}},
		{"no service range",
			[]string{},
			[]string{"--service-cluster-ip-range must contain at least one valid cidr"}},
		{"IPv6 service range larger than a /64",
			[]string{"--service-cluster-ip-range", "fd00:10:96::/48"},
			[]string{"is too large; for 128-bit addresses, the mask must be >= 64"}},
		{"service range with host bits",
			[]string{"--service-cluster-ip-range", "10.96.0.1/16"},
			[]string{"10.96.0.0/16"}},
		{"two IPv4 cluster CIDRs",
			[]string{"--service-cluster-ip-range", "10.96.0.0/16", "--cluster-cidr", "10.244.0.0/16,10.245.0.0/16"},
			[]string{"not configured as dual stack (at least one from each IPFamily"}},
		{"memory limit that is not a quantity",
			[]string{"--service-cluster-ip-range", "10.96.0.0/16", "--memory-limit", "lots"},
			[]string{`--memory-limit "lots": must be a quantity of bytes`}},
		{"memory limit too small to run",
			[]string{"--service-cluster-ip-range", "10.96.0.0/16", "--memory-limit", "64Mi"},
			[]string{"--memory-limit 64Mi: must be at least 256Mi"}},
		{"unknown feature gate",
			[]string{"--service-cluster-ip-range", "10.96.0.0/16", "--feature-gates", "NoSuchGate=true"},
			[]string{"unrecognized feature gate: NoSuchGate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			args := append([]string{"server", "--data-dir", dir, "--secure-port", "0"}, tc.args...)
			out, err := exec.CommandContext(ctx, harness.Bin, args...).CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("duet %s: %v, want a non-zero exit\n%s", strings.Join(args, " "), err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(string(out), "kubeconfig:") {
				t.Errorf("it got as far as serving:\n%s", out)
			}
			for _, p := range []string{"admin.kubeconfig", "etcd"} {
				if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
					t.Errorf("%s was created before the flags were checked", p)
				}
			}
		})
	}
}
