//go:build chaos

package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/duet-net/duet/internal/testutil/roottest"
	"github.com/duet-net/duet/test/harness"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	t.Cleanup(cancel)
	return ctx
}

// TestKillLeader: kill -9 of the server whose etcd member leads, a third
// of the way through 16 clients creating Services and pods. Every create
// that returned success exists afterwards with its cluster IPs, no
// cluster or pod IP is held twice, and writes succeed again within
// seconds (duet up restarts the killed server meanwhile).
func TestKillLeader(t *testing.T) {
	ctx := ctxT(t)
	c := startHA(t, t.TempDir())
	rec := &figures{name: "kill -9 of the etcd leader's server → a new create succeeds"}
	stuck := &figures{name: "kill -9 of the etcd leader's server → a client's next create succeeds"}
	for r := range repeats {
		ns := fmt.Sprintf("kill-%d", r)
		l := startLoad(t, ctx, c.Client, ns, services, pods)
		l.waitProgress(t, 1.0/3)
		victim := c.leader(t)
		victim.signal(t, syscall.SIGKILL)
		at := time.Now()
		l.wait(t)
		d, failed, errs := l.recoveryErrors(at)
		p := l.probeRecovery(at)
		if d < 0 || p < 0 {
			t.Fatalf("repeat %d: no create succeeded after the kill", r)
		}
		rec.add(p)
		stuck.add(d)
		t.Logf("repeat %d: killed %s (etcd leader); a new create succeeded %v later, a client's next %v later; %d attempts failed meanwhile: %s", r, victim.Name, p.Round(time.Millisecond), d.Round(time.Millisecond), failed, strings.Join(errs, "; "))
		l.verify(t, ctx, c.Client, pods)
		roottest.Eventually(t, 3*time.Minute, victim.Name+" ready again", func() error { return victim.readyz(ctx) })
		cleanup(t, ctx, c.Client, ns)
	}
	t.Log(rec)
	t.Log(stuck)
}

// apiServerDown is when a node's agent last dropped server addr, as its
// log says, or zero.
func apiServerDown(t *testing.T, dataDir, node, addr string) time.Time {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dataDir, "logs", node+".log"))
	if err != nil {
		t.Fatal(err)
	}
	var last time.Time
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, `msg="API server down`) || !strings.Contains(line, "server="+addr+" ") {
			continue
		}
		for _, field := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(field, "time="); ok {
				last, _ = time.Parse(time.RFC3339Nano, v)
			}
		}
	}
	return last
}

// apiServerInUse is the server a node's agent uses as of its log: the
// last it logged moving to, else the first.
func apiServerInUse(t *testing.T, dataDir, node, first string) (addr string, moves []time.Time) {
	t.Helper()
	f, err := os.Open(filepath.Join(dataDir, "logs", node+".log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	addr = first
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="API server in use"`) {
			continue
		}
		var ts time.Time
		for _, field := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(field, "time="); ok {
				ts, _ = time.Parse(time.RFC3339Nano, v)
			}
			if v, ok := strings.CutPrefix(field, "server="); ok {
				addr = v
			}
		}
		moves = append(moves, ts)
	}
	return addr, moves
}

// TestPartition: the server node1's agent uses is cut off (nftables drop
// in its namespace) for 30 s during the load. It reports not ready and
// refuses a write at once with a 503 naming the lost quorum; the agents
// attached to it move to another server within seconds; healed, it
// catches up; nothing acknowledged is lost, nothing held twice.
func TestPartition(t *testing.T) {
	ctx := ctxT(t)
	c := startHA(t, t.TempDir())
	rec := &figures{name: "partition → the cut-off server reports not ready"}
	agents := &figures{name: "partition → its agents drop it (their next request goes to another server)"}
	catchUp := &figures{name: "heal → the cut-off server ready again"}
	for r := range repeats {
		ns := fmt.Sprintf("part-%d", r)
		inUse, _ := apiServerInUse(t, c.DataDir, "node1", c.Servers[0].Addr)
		var victim *haServer
		for _, s := range c.Servers {
			if s.Addr == inUse {
				victim = s
			}
		}
		if victim == nil {
			t.Fatalf("node1's agent uses %s, no server of the cluster", inUse)
		}
		attached := []string{}
		for _, node := range []string{"node1", "node2"} {
			if a, _ := apiServerInUse(t, c.DataDir, node, c.Servers[0].Addr); a == victim.Addr {
				attached = append(attached, node)
			}
		}
		l := startLoad(t, ctx, c.Client, ns, services, pods)
		l.waitProgress(t, 1.0/3)
		partition(t, victim.NetNS)
		at := time.Now()
		// Not ready for the lost quorum: from then on writes are refused
		// at once (a write already in flight waits for etcd's timeout).
		roottest.Eventually(t, 30*time.Second, victim.Name+" reports the lost quorum", func() error {
			err := victim.readyz(ctx)
			if err == nil {
				return errors.New("/readyz ok")
			}
			if !strings.Contains(err.Error(), "[-]etcd-quorum failed") {
				return fmt.Errorf("not ready, but not for the quorum yet: %v", err)
			}
			return nil
		})
		rec.add(time.Since(at))
		start := time.Now()
		_, err := victim.Client.CoreV1().Services(ns).Create(ctx, newService("on-the-cut-off-server"), metav1.CreateOptions{})
		took := time.Since(start)
		if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "quorum") {
			t.Errorf("repeat %d: a create on the cut-off server: %v; want a 503 naming the lost quorum", r, err)
		} else if took > 3*time.Second {
			t.Errorf("repeat %d: a create on the cut-off server took %v to be refused", r, took)
		}
		for _, node := range attached {
			roottest.Eventually(t, 30*time.Second, node+"'s agent moves off "+victim.Name, func() error {
				now, moves := apiServerInUse(t, c.DataDir, node, c.Servers[0].Addr)
				if now == victim.Addr || len(moves) == 0 || moves[len(moves)-1].Before(at) {
					return fmt.Errorf("still on %s", now)
				}
				down := apiServerDown(t, c.DataDir, node, victim.Addr)
				if down.Before(at) {
					return fmt.Errorf("moved, but logged no drop of %s", victim.Addr)
				}
				agents.add(down.Sub(at))
				return nil
			})
		}
		// The fault lasts 30 s, whatever the checks took.
		time.Sleep(time.Until(at.Add(30 * time.Second)))
		heal(t, victim.NetNS)
		healed := time.Now()
		roottest.Eventually(t, 2*time.Minute, victim.Name+" ready after the heal", func() error { return victim.readyz(ctx) })
		catchUp.add(time.Since(healed))
		l.wait(t)
		d, failed := l.recovery(at)
		t.Logf("repeat %d: cut off %s (agents on it: %v); a create through the proxy succeeded %v after the cut; %d attempts failed", r, victim.Name, attached, d.Round(time.Millisecond), failed)
		l.verify(t, ctx, c.Client, pods)
		// Caught up: its own consistent list holds every acknowledged Service.
		mine, err := victim.Client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("listing on %s after the heal: %v", victim.Name, err)
		}
		have := map[string]bool{}
		for _, s := range mine.Items {
			have[s.Name] = true
		}
		l.mu.Lock()
		for name := range l.acked {
			if !have[name] {
				t.Errorf("%s after the heal misses Service %s", victim.Name, name)
			}
		}
		l.mu.Unlock()
		if have["on-the-cut-off-server"] {
			t.Errorf("the create the cut-off server refused exists")
		}
		cleanup(t, ctx, c.Client, ns)
	}
	t.Log(rec)
	t.Log(agents)
	t.Log(catchUp)
}

// TestLoseTwo: two of three servers frozen (SIGSTOP: alive, silent, as
// if their machines hung). The survivor refuses writes with a clear 503;
// one back (SIGCONT) restores service with everything written before.
func TestLoseTwo(t *testing.T) {
	ctx := ctxT(t)
	c := startHA(t, t.TempDir())
	rec := &figures{name: "one of two lost servers back → a create succeeds again"}
	for r := range repeats {
		ns := fmt.Sprintf("two-%d", r)
		l := startLoad(t, ctx, c.Client, ns, services/4, 0)
		l.wait(t)
		lost := []*haServer{c.Servers[(r+1)%3], c.Servers[(r+2)%3]}
		survivor := c.Servers[r%3]
		for _, s := range lost {
			s.signal(t, syscall.SIGSTOP)
		}
		t.Cleanup(func() {
			for _, s := range lost {
				if pid := s.findPID(); pid != 0 {
					_ = syscall.Kill(pid, syscall.SIGCONT)
				}
			}
		})
		var lastErr error
		roottest.Eventually(t, 30*time.Second, "the survivor refuses writes", func() error {
			start := time.Now()
			_, err := survivor.Client.CoreV1().Services(ns).Create(ctx, newService("refused"), metav1.CreateOptions{})
			lastErr = err
			if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "quorum") {
				return fmt.Errorf("create: %v", err)
			}
			if took := time.Since(start); took > 3*time.Second {
				return fmt.Errorf("refused after %v", took)
			}
			return nil
		})
		t.Logf("repeat %d: %s alone refuses a create: %v", r, survivor.Name, lastErr)
		// Through duet up's proxy too, the error says why.
		_, err := c.Client.CoreV1().Services(ns).Create(ctx, newService("refused-proxy"), metav1.CreateOptions{})
		if err == nil {
			t.Errorf("repeat %d: a create through the proxy succeeded with two servers lost", r)
		}
		lost[0].signal(t, syscall.SIGCONT)
		back := time.Now()
		roottest.Eventually(t, 2*time.Minute, "writes succeed with two of three", func() error {
			_, err := c.Client.CoreV1().Services(ns).Create(ctx, newService("after"), metav1.CreateOptions{})
			return err
		})
		rec.add(time.Since(back))
		lost[1].signal(t, syscall.SIGCONT)
		l.verify(t, ctx, c.Client, 0)
		for _, name := range []string{"refused", "refused-proxy"} {
			if _, err := c.Client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("the refused create %s left a Service: %v", name, err)
			}
		}
		for _, s := range c.Servers {
			roottest.Eventually(t, 2*time.Minute, s.Name+" ready", func() error { return s.readyz(ctx) })
		}
		cleanup(t, ctx, c.Client, ns)
	}
	t.Log(rec)
}

// TestRestoreAfterWipe: a snapshot saved under load, all three servers'
// data directories wiped, the snapshot restored: the cluster comes back
// with exactly the Services and allocations of the snapshot, and the
// agents remove the pods created after it.
func TestRestoreAfterWipe(t *testing.T) {
	ctx := ctxT(t)
	dataDir := t.TempDir()
	c := startHA(t, dataDir)
	l := startLoad(t, ctx, c.Client, "before", services/4, pods/4)
	l.wait(t)
	l.verify(t, ctx, c.Client, pods/4)
	file := filepath.Join(t.TempDir(), "snap.db")
	if out, err := exec.Command(harness.Bin, "snapshot", "save", file, "--data-dir", dataDir).CombinedOutput(); err != nil {
		t.Fatalf("duet snapshot save: %v\n%s", err, out)
	}
	later := startLoad(t, ctx, c.Client, "after", 50, 10)
	later.wait(t)
	later.verify(t, ctx, c.Client, 10)
	c.Stop(t)
	for _, s := range c.Servers {
		if err := os.RemoveAll(s.DataDir); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(harness.Bin, "snapshot", "restore", file, "--data-dir", dataDir).CombinedOutput(); err != nil {
		t.Fatalf("duet snapshot restore: %v\n%s", err, out)
	}
	c = startHA(t, dataDir)
	l.verify(t, ctx, c.Client, pods/4)
	if _, err := c.Client.CoreV1().Namespaces().Get(ctx, "after", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace after, created after the snapshot, exists after the restore: %v", err)
	}
	roottest.Eventually(t, 3*time.Minute, "the agents remove the pods created after the snapshot", func() error {
		n, err := countSandboxes(dataDir)
		if err != nil {
			return err
		}
		if n != pods/4 {
			return fmt.Errorf("%d pod sandboxes, want %d", n, pods/4)
		}
		return nil
	})
}
