package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// JoinFlags are the flags that make a server join the cluster of the
// running servers given: --join with their URLs and --token-file with the
// first one's join token.
func JoinFlags(servers ...*Server) []string {
	var urls string
	for i, s := range servers {
		if i > 0 {
			urls += ","
		}
		urls += s.Config.Host
	}
	return []string{"--join", urls, "--token-file", filepath.Join(servers[0].DataDir, "join-token")}
}

// EtcdClient connects to the embedded etcd member of a running server,
// found through DATA_DIR/etcd/ports.json; it is closed when the test ends.
func (s *Server) EtcdClient(t testing.TB) *clientv3.Client {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(s.DataDir, "etcd", "ports.json"))
	if err != nil {
		t.Fatalf("the server's etcd ports: %v", err)
	}
	var ports struct{ Client int }
	if err := json.Unmarshal(data, &ports); err != nil || ports.Client == 0 {
		t.Fatalf("the server's etcd ports (%s): %v", data, err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{fmt.Sprintf("http://127.0.0.1:%d", ports.Client)}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// EtcdMembers lists the names of the etcd cluster's members as the
// server's member knows them (serializable: it answers without a quorum).
func (s *Server) EtcdMembers(ctx context.Context, c *clientv3.Client) ([]string, error) {
	resp, err := c.MemberList(ctx, clientv3.WithSerializable())
	if err != nil {
		return nil, err
	}
	var names []string
	for _, m := range resp.Members {
		name := m.Name
		if m.IsLearner {
			name += " (learner)"
		}
		names = append(names, name)
	}
	return names, nil
}

// UpCluster is a `duet up` on a data directory the test chose, which it
// may stop and start again (Up's cluster lives as long as the test).
type UpCluster struct {
	DataDir    string
	Kubeconfig string
	cmd        *exec.Cmd
	exited     chan struct{} // closed once duet up has exited, err set
	err        error
	stopOnce   sync.Once
	mu         sync.Mutex
	out        []string
}

// StartUp runs `duet up --data-dir dataDir ARGS` and returns once it is
// ready; the cluster is stopped when the test ends if it still runs.
func StartUp(t testing.TB, dataDir string, args ...string) *UpCluster {
	t.Helper()
	u := &UpCluster{DataDir: dataDir, exited: make(chan struct{})}
	u.cmd = exec.Command(Bin, append([]string{"up", "--data-dir", dataDir}, args...)...)
	stdout, err := u.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	u.cmd.Stderr = u.cmd.Stdout
	if err := u.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			line := s.Text()
			u.mu.Lock()
			u.out = append(u.out, line)
			u.mu.Unlock()
			if k, ok := strings.CutPrefix(line, "Cluster ready. kubeconfig: "); ok {
				ready <- k
			}
		}
		u.err = u.cmd.Wait()
		close(u.exited)
	}()
	t.Cleanup(func() { u.Stop(t) })
	select {
	case k := <-ready:
		u.Kubeconfig = k
		return u
	case <-u.exited:
		t.Fatalf("duet up exited before it was ready (%v):\n%s", u.err, u.Output())
	case <-time.After(5 * time.Minute):
		t.Fatalf("duet up not ready after 5 minutes:\n%s", u.Output())
	}
	return nil
}

// Output is what duet up printed so far.
func (u *UpCluster) Output() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return strings.Join(u.out, "\n")
}

// Stop stops duet up with SIGINT, as Ctrl-C does; it must exit 0.
func (u *UpCluster) Stop(t testing.TB) {
	t.Helper()
	u.stopOnce.Do(func() {
		select {
		case <-u.exited:
			return
		default:
		}
		_ = u.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-u.exited:
			if u.err != nil {
				t.Errorf("duet up exited with %v after SIGINT:\n%s", u.err, u.Output())
			}
		case <-time.After(2 * time.Minute):
			_ = u.cmd.Process.Kill()
			<-u.exited
			t.Errorf("duet up did not stop within 2 minutes of SIGINT")
		}
	})
}
