package harness

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/cluster"
)

// Up starts `duet up` and returns once it printed the ready line; the
// cluster is stopped with SIGINT in t.Cleanup, which must exit 0 and leave
// no namespace behind.
func Up(t testing.TB, args ...string) (dataDir, kubeconfig string) {
	t.Helper()
	dataDir = t.TempDir()
	cmd := exec.Command(Bin, append([]string{"up", "--data-dir", dataDir}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
	}()
	var out []string
	t.Cleanup(func() {
		if t.Failed() {
			dumpCluster(t, dataDir)
		}
		_ = cmd.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("duet up exited with %v after SIGINT; output:\n%s", err, strings.Join(out, "\n"))
			}
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("duet up did not stop within 60s of SIGINT")
		}
		topo, _ := cluster.Plan(dataDir, 2)
		if left, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(left), "duet-"+topo.ID) {
			t.Errorf("namespaces left after duet up stopped:\n%s", left)
		}
		for _, n := range topo.Nodes {
			if left, _ := sandbox.List(cluster.NetNSPath(n.NetNS)); len(left) > 0 {
				t.Errorf("pod namespaces of %s left after duet up stopped: %v", n.Name, left)
			}
		}
	})
	deadline := time.After(3 * time.Minute)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("duet up exited before it was ready:\n%s\nserver log:\n%s", strings.Join(out, "\n"), Tail(filepath.Join(dataDir, "logs", "server.log")))
			}
			out = append(out, line)
			if k, ok := strings.CutPrefix(line, "Cluster ready. kubeconfig: "); ok {
				return dataDir, k
			}
		case <-deadline:
			t.Fatalf("duet up not ready after 3 minutes:\n%s", strings.Join(out, "\n"))
		}
	}
}

// dumpCluster logs what a failed test's cluster holds and its logs' last
// lines, before it is stopped and its data directory removed.
func dumpCluster(t testing.TB, dataDir string) {
	kc := filepath.Join(dataDir, "admin.kubeconfig")
	state, _ := exec.Command("kubectl", "--kubeconfig", kc, "get", "nodes,pods,events", "-A", "-o", "wide").CombinedOutput()
	t.Logf("the cluster when the test failed:\n%s", state)
	logs, _ := filepath.Glob(filepath.Join(dataDir, "logs", "*.log"))
	for _, l := range logs {
		t.Logf("last lines of %s:\n%s", filepath.Base(l), Tail(l))
	}
}

// Tail is the last 4,000 bytes of a log file, for failure messages.
func Tail(path string) string {
	data, _ := os.ReadFile(path)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}
