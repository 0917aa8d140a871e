package netns

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/testutil/privatemounts"
)

// privateEnv marks the copy of the test binary that runs in a private mount
// namespace.
const privateEnv = "DUET_NETNS_TEST_PRIVATE_MOUNTS"

// TestMain runs the tests, as root, in a private mount namespace: every
// directory the tests mount on is the test's own, and what a failed test
// leaves mounted goes away with the process instead of staying in the
// machine's mount table. Network namespaces are not per mount namespace, so
// names stay unique.
func TestMain(m *testing.M) {
	os.Exit(privatemounts.Main(m, privateEnv))
}

func requireRoot(t testing.TB) {
	t.Helper()
	// The policy of roottest.Require, which cannot be imported here: it
	// makes its namespaces through this package.
	if os.Geteuid() != 0 {
		if os.Getenv("DUET_TEST_REQUIRE_ROOT") != "" {
			t.Fatal("needs root: creates network namespaces and mounts (DUET_TEST_REQUIRE_ROOT is set)")
		}
		t.Skip("needs root: creates network namespaces and mounts; run as root (make test) to include it")
	}
}

// nsDir returns a fresh plain directory for namespaces, as /run/netns is on
// a machine where nothing used `ip netns` yet. Whatever is mounted in it is
// removed when the test ends.
func nsDir(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "netns")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, m := range mustMounts(t) {
			if filepath.Dir(m.MountPoint) == dir {
				_ = Remove(m.MountPoint)
			}
		}
		for range 16 {
			if unix.Unmount(dir, unix.MNT_DETACH) != nil {
				break
			}
		}
	})
	return dir
}

func mustMounts(t testing.TB) []mount {
	t.Helper()
	ms, err := readMounts()
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// nsIno is the inode of a namespace file: the namespace's identity.
func nsIno(t testing.TB, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// mountedAnywhere reports whether the namespace with inode ino is mounted
// anywhere in this mount namespace, visible or hidden.
func mountedAnywhere(t testing.TB, ino uint64) bool {
	t.Helper()
	want := fmt.Sprintf("net:[%d]", ino)
	for _, m := range mustMounts(t) {
		if m.FSType == "nsfs" && m.Root == want {
			return true
		}
	}
	return false
}

// mountRaw mounts a new namespace on path the way vishvananda/netns'
// NewNamed did in earlier Duet, without making the directory a mount point:
// the state that the old bug started from. It returns the namespace's inode.
func mountRaw(t *testing.T, path string) uint64 {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends in the new namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- unix.Mount(threadNetNS, path, "none", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		t.Fatalf("mounting a namespace on %s: %v", path, err)
	}
	return nsIno(t, path)
}
