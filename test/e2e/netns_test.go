package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/cluster"
	"github.com/duet-net/duet/test/harness"
)

// freshMachine is a mount namespace of the test's own with a new tmpfs on
// /run: in it /run/netns is a plain directory, as on a machine where nothing
// used `ip netns` yet, and nothing mounted there is seen by the rest of the
// machine, where other tests use /run/netns. Network namespaces are not per
// mount namespace: their names stay unique through the data directory.
type freshMachine struct {
	holder *exec.Cmd // keeps the mount namespace alive
	mntNS  string    // its identity, as /proc/PID/ns/mnt reads
}

func newFreshMachine(t *testing.T) *freshMachine {
	t.Helper()
	holder := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		"mount -t tmpfs duet-e2e-run /run && mkdir /run/netns && echo ready && exec sleep 1d")
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	holder.Stderr = os.Stderr
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("making a private mount namespace: %q, %v", line, err)
	}
	m := &freshMachine{holder: holder}
	if m.mntNS, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", holder.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	if n := len(m.mountsAt(t, "/run/netns")); n != 0 {
		t.Fatalf("/run/netns is a mount point (%d mounts) in the fresh mount namespace", n)
	}
	return m
}

// command runs name in the fresh machine's mount namespace.
func (m *freshMachine) command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{fmt.Sprintf("--mount=/proc/%d/ns/mnt", m.holder.Process.Pid), "--", name}, args...)...)
}

func (m *freshMachine) run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := m.command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// mountLine is what the checks need of a line of mountinfo.
type mountLine struct {
	id, parent                       int
	root, mountPoint, fsType, source string
}

// mounts reads the mount table of the fresh machine's mount namespace: the
// tmpfs on /run and what is mounted under it. (The copies of the machine's
// own mounts under /run, hidden under the tmpfs, are not the test's.)
func (m *freshMachine) mounts(t *testing.T) []mountLine {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", m.holder.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var all []mountLine
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if i := slices.Index(f, "-"); i > 4 && i+2 < len(f) {
			id, _ := strconv.Atoi(f[0])
			parent, _ := strconv.Atoi(f[1])
			all = append(all, mountLine{id: id, parent: parent, root: f[3], mountPoint: f[4], fsType: f[i+1], source: f[i+2]})
		}
	}
	ours := map[int]bool{}
	var out []mountLine
	for changed := true; changed; { // mountinfo may list a child before its parent
		changed = false
		for _, l := range all {
			if !ours[l.id] && (ours[l.parent] || l.source == "duet-e2e-run" && l.mountPoint == "/run") {
				ours[l.id], changed = true, true
				out = append(out, l)
			}
		}
	}
	return out
}

func (m *freshMachine) mountsAt(t *testing.T, path string) []mountLine {
	var out []mountLine
	for _, l := range m.mounts(t) {
		if l.mountPoint == path {
			out = append(out, l)
		}
	}
	return out
}

// namespaces returns the namespaces mounted under /run/netns, hidden or
// not, by identity ("net:[4026532174]") with their names.
func (m *freshMachine) namespaces(t *testing.T) map[string]string {
	out := map[string]string{}
	for _, l := range m.mounts(t) {
		if l.fsType == "nsfs" && filepath.Dir(l.mountPoint) == "/run/netns" {
			out[l.root] = filepath.Base(l.mountPoint)
		}
	}
	return out
}

// processes lists the processes in the fresh machine's mount namespace,
// other than the one that holds it.
func (m *freshMachine) processes() []int {
	var pids []int
	des, _ := os.ReadDir("/proc")
	for _, de := range des {
		pid, err := strconv.Atoi(de.Name())
		if err != nil || pid == m.holder.Process.Pid {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && ns == m.mntNS {
			pids = append(pids, pid)
		}
	}
	return pids
}

// startUp starts `duet up` in the fresh machine and returns once it is
// ready; the caller stops it.
func (m *freshMachine) startUp(t *testing.T, dataDir string) *exec.Cmd {
	t.Helper()
	cmd := m.command(harness.Bin, "up", "--data-dir", dataDir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	ready := make(chan bool, 1)
	var out []string
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			out = append(out, s.Text())
			if strings.HasPrefix(s.Text(), "Cluster ready.") {
				ready <- true
			}
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("duet up exited before it was ready:\n%s", strings.Join(out, "\n"))
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("duet up not ready after 3 minutes")
	}
	return cmd
}

// clusterState is what a running cluster has, to check it is all gone.
type clusterState struct {
	netns map[string]string // identity -> name of every Duet namespace
	user  string            // the namespace `ip netns add` made meanwhile
}

// useWhileUp runs a pod and, as a user would beside the cluster, `ip netns
// add` and `ip netns list`; it returns what the cluster has.
func (m *freshMachine) useWhileUp(t *testing.T, dataDir string) clusterState {
	t.Helper()
	kubeconfig := filepath.Join(dataDir, "admin.kubeconfig")
	kubectl(t, kubeconfig, "run", "sleeper", "--image=ignored", "--command", "--", "sleep", "3600")
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s")
	user := fmt.Sprintf("user-%d-%s", os.Getpid(), filepath.Base(dataDir))
	m.run(t, "ip", "netns", "add", user)
	t.Cleanup(func() { _ = m.command("ip", "netns", "del", user).Run() })
	list := m.run(t, "ip", "netns", "list")
	topo, _ := cluster.Plan(dataDir, 2)
	for _, want := range []string{user, topo.Underlay, topo.Nodes[0].NetNS} {
		if !strings.Contains(list, want) {
			t.Errorf("ip netns list lacks %s:\n%s", want, list)
		}
	}
	if n := len(m.mountsAt(t, "/run/netns")); n != 1 {
		t.Errorf("/run/netns has %d mounts while the cluster is up, want 1", n)
	}
	st := clusterState{netns: map[string]string{}, user: user}
	for id, name := range m.namespaces(t) {
		if name != user {
			st.netns[id] = name
		}
	}
	// Two nodes, the underlay, the outside world and the pod.
	if len(st.netns) != 5 {
		t.Errorf("namespaces of the cluster: %v, want 5", st.netns)
	}
	return st
}

// assertNothingLeft checks that nothing of the cluster is left, while the
// user's namespace is.
func (m *freshMachine) assertNothingLeft(t *testing.T, dataDir string, st clusterState) {
	t.Helper()
	// Processes: those of the cluster have been killed, but may take a
	// moment to go.
	deadline := time.Now().Add(30 * time.Second)
	for len(m.processes()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if left := m.processes(); len(left) > 0 {
		t.Errorf("processes left: %v", left)
	}
	// Namespaces: mounted nowhere, visible or hidden, and held by no
	// process of the machine.
	for id, name := range m.namespaces(t) {
		if _, ours := st.netns[id]; ours {
			t.Errorf("namespace %s (%s) is still mounted", name, id)
		}
	}
	des, _ := os.ReadDir("/proc")
	for _, de := range des {
		if id, err := os.Readlink("/proc/" + de.Name() + "/ns/net"); err == nil && st.netns[id] != "" {
			t.Errorf("process %s is in the cluster's namespace %s", de.Name(), st.netns[id])
		}
	}
	list := m.run(t, "ip", "netns", "list")
	topo, _ := cluster.Plan(dataDir, 2)
	if strings.Contains(list, "duet-"+topo.ID) || !strings.Contains(list, st.user) {
		t.Errorf("ip netns list after teardown shows %q; want the user's namespace %s and none of the cluster's", list, st.user)
	}
	if n := len(m.mountsAt(t, "/run/netns")); n != 1 {
		t.Errorf("/run/netns has %d mounts, want 1", n)
	}
	// The user's namespace is still there, and usable.
	m.run(t, "ip", "netns", "exec", st.user, "true")
	// Nothing went into the host's namespace either.
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "duet") {
			t.Errorf("link %s (%s) in the host namespace", l.Attrs().Name, l.Type())
		}
	}
	if c, err := nftables.New(); err == nil {
		tables, _ := c.ListTables()
		for _, tb := range tables {
			if strings.HasPrefix(tb.Name, "duet") {
				t.Errorf("nftables table %s in the host namespace", tb.Name)
			}
		}
	}
}

// TestFreshMachineCtrlC: on a machine where /run/netns was a plain
// directory, Ctrl-C of `duet up` leaves nothing behind, even though `ip
// netns` was used while it ran (issue 11).
func TestFreshMachineCtrlC(t *testing.T) {
	m := newFreshMachine(t)
	dataDir := t.TempDir()
	up := m.startUp(t, dataDir)
	st := m.useWhileUp(t, dataDir)
	_ = up.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- up.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("duet up exited with %v after SIGINT (its log: %s)", err, filepath.Join(dataDir, "logs"))
		}
	case <-time.After(90 * time.Second):
		t.Fatal("duet up did not stop within 90s of SIGINT")
	}
	m.assertNothingLeft(t, dataDir, st)
}

// TestFreshMachineKill9ThenDown: after kill -9 of `duet up` and all its
// children, `duet down` leaves nothing behind.
func TestFreshMachineKill9ThenDown(t *testing.T) {
	m := newFreshMachine(t)
	dataDir := t.TempDir()
	up := m.startUp(t, dataDir)
	st := m.useWhileUp(t, dataDir)
	for _, pid := range m.processes() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = up.Wait()
	out, err := m.command(harness.Bin, "down", "--data-dir", dataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("duet down: %v\n%s", err, out)
	}
	m.assertNothingLeft(t, dataDir, st)
}

// TestDownRepairsHiddenNamespaces builds the state that earlier versions of
// `duet up` left on such a machine: namespaces mounted in the plain
// /run/netns, then /run/netns bind-mounted over itself (hiding them), a
// user's namespace on the new mount, and a teardown that removed only the
// visible copies. `duet down` removes the cluster's namespaces in both
// layers and leaves the user's.
func TestDownRepairsHiddenNamespaces(t *testing.T) {
	m := newFreshMachine(t)
	dataDir := t.TempDir()
	topo, _ := cluster.Plan(dataDir, 2)
	pod, err := sandbox.NetNSPath(cluster.NetNSPath(topo.Nodes[0].NetNS), "a-pod")
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, name := range topo.Namespaces() {
		paths = append(paths, cluster.NetNSPath(name))
	}
	paths = append(paths, pod)
	// What vishvananda/netns' NewNamed did: a namespace bind-mounted on a
	// file of the plain directory.
	for _, p := range paths {
		m.run(t, "sh", "-c", "touch "+p+" && unshare --net="+p+" true")
	}
	// What the old agent did next, then a user's namespace on top.
	m.run(t, "mount", "--rbind", "/run/netns", "/run/netns")
	m.run(t, "mount", "--make-rshared", "/run/netns")
	user := fmt.Sprintf("user-%d-repair", os.Getpid())
	m.run(t, "ip", "netns", "add", user)
	st := clusterState{netns: map[string]string{}, user: user}
	for id, name := range m.namespaces(t) {
		if name != user {
			st.netns[id] = name
		}
	}
	// The failed teardown: visible copies unmounted, the files busy.
	for _, p := range paths[:3] {
		m.run(t, "umount", p)
		if out, err := m.command("rm", p).CombinedOutput(); err == nil || !strings.Contains(string(out), "busy") {
			t.Fatalf("rm %s under the second mount: %v %s; want busy (the state to repair)", p, err, out)
		}
	}
	out, err := m.command(harness.Bin, "down", "--data-dir", dataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("duet down: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "deleting namespace "+topo.Underlay) {
		t.Errorf("duet down did not say what it removed:\n%s", out)
	}
	if n := len(m.mountsAt(t, "/run/netns")); n != 1 {
		t.Fatalf("/run/netns has %d mounts, want the one the old agent made", n)
	}
	m.assertNothingLeft(t, dataDir, st)
}
