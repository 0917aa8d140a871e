package netns

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestParseMountInfo(t *testing.T) {
	for _, tc := range []struct {
		name, line string
		want       mount
		bad        bool
	}{
		{name: "a namespace mount", line: `66 65 0:4 net:[4026532174] /run/netns/duet-3221a6-ul rw - nsfs nsfs rw`,
			want: mount{ID: 66, Parent: 65, Root: "net:[4026532174]", MountPoint: "/run/netns/duet-3221a6-ul", FSType: "nsfs"}},
		{name: "a shared bind mount with optional fields", line: `69 65 0:39 /netns /run/netns rw,relatime shared:1 master:3 - tmpfs tmpfs rw`,
			want: mount{ID: 69, Parent: 65, Root: "/netns", MountPoint: "/run/netns", FSType: "tmpfs", Shared: true}},
		{name: "a slave is not shared", line: `70 69 0:39 / /mnt rw master:3 - tmpfs tmpfs rw`,
			want: mount{ID: 70, Parent: 69, Root: "/", MountPoint: "/mnt", FSType: "tmpfs"}},
		{name: "escaped space and backslash", line: `71 26 254:0 /a\040b /mnt/x\134y rw - ext4 /dev/vda rw`,
			want: mount{ID: 71, Parent: 26, Root: "/a b", MountPoint: `/mnt/x\y`, FSType: "ext4"}},
		{name: "no separator", line: `71 26 254:0 / /mnt rw ext4 /dev/vda rw`, bad: true},
		{name: "no file system type", line: `71 26 254:0 / /mnt rw -`, bad: true},
		{name: "bad ID", line: `x 26 254:0 / /mnt rw - ext4 /dev/vda rw`, bad: true},
		{name: "too short", line: `71 26`, bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMountLine(tc.line)
			if tc.bad {
				if err == nil {
					t.Fatalf("parsed %q as %+v, want an error", tc.line, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseMountLine(%q) = %+v, %v; want %+v", tc.line, got, err, tc.want)
			}
		})
	}
}

func FuzzParseMountInfo(f *testing.F) {
	f.Add([]byte("66 65 0:4 net:[4026532174] /run/netns/a rw - nsfs nsfs rw\n69 65 0:39 /netns /run/netns rw shared:1 - tmpfs tmpfs rw\n"))
	f.Add([]byte(`71 26 254:0 /a\040b /mnt/x\1 rw - ext4 /dev/vda rw`))
	f.Add([]byte("1 2 3 4 5 6 - -"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ms, err := parseMountInfo(data)
		if err != nil {
			return
		}
		for _, m := range ms {
			if m.FSType == "" || m.MountPoint == "" {
				t.Fatalf("parsed %q into %+v without a type or mount point", data, m)
			}
		}
	})
}

// TestCreatePreparesBeforeMounting creates a namespace on a fresh machine's
// plain directory: the directory becomes a shared mount point of its own,
// and the namespace is prepared before anyone can see it at its path.
func TestCreatePreparesBeforeMounting(t *testing.T) {
	dir := nsDir(t)
	path := filepath.Join(dir, "a")
	var visibleDuringPrep bool
	ns, err := Create(path, Prep{
		Sysctls: []Sysctl{{"net/ipv4/ip_forward", "1"}, {"net/ipv6/conf/default/accept_dad", "0"}},
		LoAlias: "duet-test:a",
		Prepare: func(h *netlink.Handle) error {
			visibleDuringPrep = IsNetNS(path)
			return h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "d0"}})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.Close()
	if visibleDuringPrep {
		t.Error("the namespace was mounted at its path before it was prepared")
	}
	if !IsNetNS(path) {
		t.Fatalf("%s is not a namespace after Create", path)
	}
	if dm := mountsAt(mustMounts(t), dir); len(dm) != 1 || !dm[0].Shared {
		t.Errorf("mounts of %s: %+v; want one, shared", dir, dm)
	}
	err = Do(path, func() error {
		data, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		if err != nil {
			return err
		}
		if got := strings.TrimSpace(string(data)); got != "1" {
			return fmt.Errorf("ip_forward is %s in the namespace, want 1", got)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	h, err := NewHandle(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil || lo.Attrs().Alias != "duet-test:a" || lo.Attrs().OperState != netlink.OperUnknown && lo.Attrs().OperState != netlink.OperUp {
		t.Errorf("lo in the namespace: %+v, %v; want it up with the alias", lo, err)
	}
	if _, err := h.LinkByName("d0"); err != nil {
		t.Errorf("the link Prepare made: %v", err)
	}

	ino := nsIno(t, path)
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) || mountedAnywhere(t, ino) {
		t.Errorf("after Remove: stat %v, still mounted %v", err, mountedAnywhere(t, ino))
	}
	if err := Remove(path); err != nil {
		t.Errorf("Remove of an absent namespace: %v, want success", err)
	}
}

func TestCreate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before func(t *testing.T, path string) // what is at path before Create
		prep   Prep
		ok     bool
		check  func(t *testing.T, path string, err error)
	}{
		{
			name:   "an empty file a crash left is reused",
			before: func(t *testing.T, path string) { must(t, os.WriteFile(path, nil, 0o444)) },
			ok:     true,
		},
		{
			name: "a mounted namespace is left alone",
			before: func(t *testing.T, path string) {
				ns, err := Create(path, Prep{LoAlias: "first"})
				must(t, err)
				ns.Close()
			},
			check: func(t *testing.T, path string, err error) {
				if !errors.Is(err, fs.ErrExist) {
					t.Errorf("error %v, want one wrapping fs.ErrExist", err)
				}
				h, herr := NewHandle(path)
				must(t, herr)
				defer h.Close()
				if lo, _ := h.LinkByName("lo"); lo == nil || lo.Attrs().Alias != "first" {
					t.Errorf("the first namespace at %s is not there any more", path)
				}
				if n := len(mountsAt(mustMounts(t), path)); n != 1 {
					t.Errorf("%d mounts on %s, want 1", n, path)
				}
			},
		},
		{
			name:   "a file with content is not overwritten",
			before: func(t *testing.T, path string) { must(t, os.WriteFile(path, []byte("data"), 0o644)) },
			check: func(t *testing.T, path string, err error) {
				if data, _ := os.ReadFile(path); string(data) != "data" {
					t.Errorf("%s holds %q after Create failed, want its data", path, data)
				}
			},
		},
		{
			name: "a failed preparation leaves nothing",
			prep: Prep{Prepare: func(*netlink.Handle) error { return errors.New("no") }},
			check: func(t *testing.T, path string, err error) {
				if _, serr := os.Stat(path); !errors.Is(serr, fs.ErrNotExist) || len(mountsAt(mustMounts(t), path)) > 0 {
					t.Errorf("after a failed Create: stat %v, mounts %v", serr, mountsAt(mustMounts(t), path))
				}
			},
		},
		{
			name: "a bad sysctl leaves nothing",
			prep: Prep{Sysctls: []Sysctl{{"net/ipv4/no_such_knob", "1"}}},
			check: func(t *testing.T, path string, err error) {
				if !strings.Contains(fmt.Sprint(err), "no_such_knob") {
					t.Errorf("error %v does not name the sysctl", err)
				}
				if _, serr := os.Stat(path); !errors.Is(serr, fs.ErrNotExist) {
					t.Errorf("after a failed Create: stat %v", serr)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(nsDir(t), "x")
			if tc.before != nil {
				tc.before(t, path)
			}
			ns, err := Create(path, tc.prep)
			if err == nil {
				ns.Close()
			}
			if (err == nil) != tc.ok {
				t.Fatalf("Create: %v, want success %v", err, tc.ok)
			}
			if tc.ok && !IsNetNS(path) {
				t.Errorf("%s is not a namespace after Create", path)
			}
			if tc.check != nil {
				tc.check(t, path, err)
			}
		})
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// helperEnv makes the test binary a helper process (see TestHelperProcess).
const helperEnv = "DUET_NETNS_TEST_HELPER"

// TestHelperProcess is not a test: it is what helper processes run.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "ensure-dir":
		// Linger where a second mount would come from, so that without the
		// lock the processes would all be there at once.
		betweenCheckAndMount = func() { time.Sleep(100 * time.Millisecond) }
		fmt.Println("ready")
		_, _ = io.ReadAll(os.Stdin) // start when the test closes stdin
		if err := ensureDir(os.Getenv("DIR")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	case "exec":
		err := Exec(os.Getenv("NETNS"), "/bin/readlink", []string{"readlink", "/proc/self/ns/net"}, os.Environ())
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func helper(t *testing.T, mode string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode), env...)
	return cmd
}

// TestEnsureDirFromManyGoroutinesAndProcesses makes the directory shared
// from goroutines and processes at once: it must end as exactly one mount,
// never one stacked over another.
func TestEnsureDirFromManyGoroutinesAndProcesses(t *testing.T) {
	dir := nsDir(t)
	var procs []*exec.Cmd
	var starts []io.WriteCloser
	betweenCheckAndMount = func() { time.Sleep(100 * time.Millisecond) }
	t.Cleanup(func() { betweenCheckAndMount = nil })
	for range 6 {
		cmd := helper(t, "ensure-dir", "DIR="+dir)
		in, err := cmd.StdinPipe()
		must(t, err)
		out, err := cmd.StdoutPipe()
		must(t, err)
		cmd.Stderr = os.Stderr
		must(t, cmd.Start())
		// Wait until the helper is ready to go, so that all go at once.
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
			t.Fatalf("helper process said %q, %v", line, err)
		}
		procs, starts = append(procs, cmd), append(starts, in)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	release := make(chan struct{})
	for range 32 {
		wg.Go(func() {
			<-release
			errs <- ensureDir(dir)
		})
	}
	for _, in := range starts {
		in.Close()
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	for _, p := range procs {
		if err := p.Wait(); err != nil {
			t.Errorf("helper process: %v", err)
		}
	}
	if dm := mountsAt(mustMounts(t), dir); len(dm) != 1 || !dm[0].Shared {
		t.Fatalf("mounts of %s: %+v; want exactly one, shared", dir, dm)
	}
}

// TestEnsureDirKeepsNamespacesMountedBefore starts from a plain directory
// holding a namespace that a tool mounted without sharing the directory. A
// bind mount of the directory over itself would hide that mount: after
// EnsureDir the namespace is the same, reachable, and deletable by path.
func TestEnsureDirKeepsNamespacesMountedBefore(t *testing.T) {
	dir := nsDir(t)
	path := filepath.Join(dir, "old")
	ino := mountRaw(t, path)
	must(t, ensureDir(dir))
	ms := mustMounts(t)
	dm := mountsAt(ms, dir)
	if len(dm) != 1 {
		t.Fatalf("mounts of %s: %+v, want one", dir, dm)
	}
	if pm := mountsAt(ms, path); len(pm) != 1 || pm[0].Parent != dm[0].ID || nsIno(t, path) != ino {
		t.Fatalf("mounts on %s: %+v, want the same namespace once, on the directory's mount %d", path, pm, dm[0].ID)
	}
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unlink(path); err != nil {
		t.Fatalf("deleting the namespace file as ip netns del does: %v", err)
	}
	if mountedAnywhere(t, ino) {
		t.Error("the namespace is still mounted somewhere")
	}
}

// TestRemoveRepairsNamespacesHiddenByASecondMount builds the state earlier
// versions of Duet left: namespaces mounted in the plain directory, then the
// directory bind-mounted over itself, then a failed teardown that removed the
// visible copy only. Remove must delete Duet's namespaces in both layers and
// leave a namespace made on the new mount alone.
func TestRemoveRepairsNamespacesHiddenByASecondMount(t *testing.T) {
	dir := nsDir(t)
	a, b, user := filepath.Join(dir, "duet-a"), filepath.Join(dir, "duet-b"), filepath.Join(dir, "user")
	inoA, inoB := mountRaw(t, a), mountRaw(t, b)
	// What the old ensureNetNSDir did when the directory was no mount point.
	must(t, unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""))
	must(t, unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""))
	ns, err := Create(user, Prep{LoAlias: "user"})
	must(t, err)
	ns.Close()
	inoUser := nsIno(t, user)
	// The old teardown: the top copy unmounted, then the delete fails.
	must(t, Unmount(b))
	if err := unix.Unlink(b); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("deleting %s under the second mount: %v, want EBUSY (the bug this repairs)", b, err)
	}

	names, err := list(dir)
	must(t, err)
	if want := []string{"duet-a", "duet-b", "user"}; !slices.Equal(names, want) {
		t.Errorf("list = %v, want %v", names, want)
	}
	for _, p := range []string{a, b} {
		if err := Remove(p); err != nil {
			t.Errorf("Remove(%s): %v", p, err)
		}
	}
	for p, ino := range map[string]uint64{a: inoA, b: inoB} {
		if mountedAnywhere(t, ino) {
			t.Errorf("%s is still mounted after Remove", p)
		}
	}
	if !IsNetNS(user) || nsIno(t, user) != inoUser {
		t.Fatalf("the user's namespace %s is gone", user)
	}
	if names, _ := list(dir); !slices.Equal(names, []string{"user"}) {
		t.Errorf("list after the repair = %v, want only the user's namespace", names)
	}
}

func TestDo(t *testing.T) {
	dir := nsDir(t)
	path := filepath.Join(dir, "a")
	ns, err := Create(path, Prep{})
	must(t, err)
	ns.Close()
	own := nsIno(t, threadNetNS)
	var in uint64
	must(t, Do(path, func() error { in = nsIno(t, threadNetNS); return nil }))
	if in != nsIno(t, path) {
		t.Errorf("Do ran in namespace %d, want %d", in, nsIno(t, path))
	}
	if nsIno(t, threadNetNS) != own {
		t.Error("the caller's thread changed namespace")
	}
	fnErr := errors.New("fn failed")
	if err := Do(path, func() error { return fnErr }); !errors.Is(err, fnErr) {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	plain := filepath.Join(dir, "plain")
	must(t, os.WriteFile(plain, nil, 0o644))
	if err := Do(plain, func() error { return nil }); !errors.Is(err, ErrNotNetNS) {
		t.Errorf("Do in a plain file: %v, want ErrNotNetNS", err)
	}
	if err := Do(filepath.Join(dir, "absent"), func() error { return nil }); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Do in an absent namespace: %v, want fs.ErrNotExist", err)
	}
}

// TestAThreadThatCannotLeaveIsNotReused makes the return to the original
// namespace fail: the thread left in the other namespace must end, and no
// goroutine may run on it afterwards.
func TestAThreadThatCannotLeaveIsNotReused(t *testing.T) {
	dir := nsDir(t)
	path := filepath.Join(dir, "a")
	ns, err := Create(path, Prep{})
	must(t, err)
	ns.Close()
	own := nsIno(t, threadNetNS)
	var calls int
	setns = func(fd, nstype int) error {
		calls++
		if calls == 2 { // the way back
			return unix.EPERM
		}
		return unix.Setns(fd, nstype)
	}
	t.Cleanup(func() { setns = unix.Setns })
	var tid int
	err = Do(path, func() error { tid = unix.Gettid(); return nil })
	setns = unix.Setns
	if err == nil || !strings.Contains(err.Error(), "restore") {
		t.Fatalf("Do: %v, want an error about restoring the thread", err)
	}
	// The thread ends with its goroutine (the main thread is parked for
	// good instead).
	task := fmt.Sprintf("/proc/self/task/%d", tid)
	deadline := time.Now().Add(10 * time.Second)
	for tid != os.Getpid() {
		if _, err := os.Stat(task); errors.Is(err, fs.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d, left in the namespace, still exists", tid)
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range 200 {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			ino := nsIno(t, threadNetNS)
			mu.Lock()
			defer mu.Unlock()
			if unix.Gettid() == tid || ino != own {
				t.Errorf("a goroutine ran on thread %d in namespace %d (own %d)", unix.Gettid(), ino, own)
			}
		})
	}
	wg.Wait()
}

func TestExec(t *testing.T) {
	dir := nsDir(t)
	path := filepath.Join(dir, "a")
	ns, err := Create(path, Prep{})
	must(t, err)
	ns.Close()
	out, err := helper(t, "exec", "NETNS="+path).CombinedOutput()
	if want := fmt.Sprintf("net:[%d]", nsIno(t, path)); err != nil || strings.TrimSpace(string(out)) != want {
		t.Errorf("readlink /proc/self/ns/net through Exec: %q, %v; want %s", out, err, want)
	}
}

// TestEnsureDirSeesThroughHiddenMounts: a mount of the directory's path
// hidden under a mount of its parent (as in a mount namespace that put a
// fresh tmpfs on /run) is listed in the mount table, but the directory is no
// mount point: it must still become one.
func TestEnsureDirSeesThroughHiddenMounts(t *testing.T) {
	requireRoot(t)
	parent := t.TempDir()
	dir := filepath.Join(parent, "netns")
	must(t, os.Mkdir(dir, 0o755))
	must(t, unix.Mount(dir, dir, "none", unix.MS_BIND, ""))
	must(t, unix.Mount("duet-test", parent, "tmpfs", 0, ""))
	t.Cleanup(func() {
		_ = unix.Unmount(parent, unix.MNT_DETACH)
		_ = unix.Unmount(dir, unix.MNT_DETACH)
	})
	must(t, os.Mkdir(dir, 0o755))
	path := filepath.Join(dir, "a")
	ns, err := Create(path, Prep{})
	must(t, err)
	ns.Close()
	t.Cleanup(func() { _ = Remove(path) })
	if !IsNetNS(path) {
		t.Fatalf("%s is not a namespace", path)
	}
	var stx unix.Statx_t
	must(t, unix.Statx(unix.AT_FDCWD, dir, 0, unix.STATX_MNT_ID, &stx))
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		t.Errorf("%s is not a mount point after Create", dir)
	}
}
