package integration

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/duet-net/duet/internal/netns"
	"github.com/duet-net/duet/internal/pki"
	"github.com/duet-net/duet/internal/testutil/roottest"
	"github.com/duet-net/duet/test/harness"
)

// TestAgentFollowsServers (root: the agent programs a namespace of the
// test's): an agent given three servers with --server keeps its node
// alive when the server it uses is killed: its Lease goes on being
// renewed through another server, and it says which one within seconds.
func TestAgentFollowsServers(t *testing.T) {
	roottest.Require(t)
	t.Parallel()
	ctx := ctxT(t)
	s := startCluster(t, 3)
	ns := roottest.NetNS(t, "duet-ha-", "node")

	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "node.kubeconfig")
	fatalIf(t, pki.WriteNodeKubeconfig(s[0].DataDir, "ha-node", kubeconfig))
	var urls []string
	for _, x := range s {
		urls = append(urls, x.Config.Host)
	}
	logPath := filepath.Join(dir, "agent.log")
	logFile, err := os.Create(logPath)
	fatalIf(t, err)
	defer logFile.Close()
	p, err := harness.StartProcess([]string{"agent", "--kubeconfig", kubeconfig, "--node-name", "ha-node",
		"--node-ip", "203.0.113.77,2001:db8:0:1::77", "--netns", netns.Path(ns), "--state-dir", filepath.Join(dir, "state"),
		"--no-proxy", "--no-masq", "--server", strings.Join(urls, ",")}, logFile)
	fatalIf(t, err)
	t.Cleanup(func() {
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-p.Done():
		case <-time.After(30 * time.Second):
			_ = p.Signal(syscall.SIGKILL)
			<-p.Done()
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", harness.Tail(logPath))
		}
	})

	leases := s[1].Client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	eventually(t, 90*time.Second, "the node is Ready", func() error {
		n, err := s[1].Client.CoreV1().Nodes().Get(ctx, "ha-node", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("conditions %+v", n.Status.Conditions)
	})

	// The agent prefers the first server.
	s[0].Kill(t)
	killed := time.Now()
	eventually(t, 30*time.Second, "the node's Lease is renewed after the kill", func() error {
		l, err := leases.Get(ctx, "ha-node", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if l.Spec.RenewTime == nil || !l.Spec.RenewTime.After(killed) {
			return fmt.Errorf("last renewed %v", l.Spec.RenewTime)
		}
		return nil
	})
	moved := agentMoved(t, logPath, strings.TrimPrefix(s[0].Config.Host, "https://"))
	if moved.IsZero() {
		t.Fatalf("the agent never said it moved to another server:\n%s", harness.Tail(logPath))
	}
	t.Logf("the agent moved to another server %v after the kill", moved.Sub(killed).Round(time.Millisecond))
	if d := moved.Sub(killed); d > 10*time.Second {
		t.Errorf("the agent moved to another server %v after the kill; want within a few seconds", d)
	}
	select {
	case <-p.Done():
		t.Fatalf("the agent exited: %v", p.Wait())
	default:
	}
}

// agentMoved is when the agent logged that it uses a server other than
// dead, or zero.
func agentMoved(t *testing.T, logPath, dead string) time.Time {
	t.Helper()
	f, err := os.Open(logPath)
	fatalIf(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="API server in use"`) || !strings.Contains(line, "was="+dead) {
			continue
		}
		for _, field := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(field, "time="); ok {
				if ts, err := time.Parse(time.RFC3339Nano, v); err == nil {
					return ts
				}
			}
		}
	}
	return time.Time{}
}
