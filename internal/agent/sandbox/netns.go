package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// threadNetNS names the calling thread's own network namespace.
const threadNetNS = "/proc/thread-self/ns/net"

// sysctl is one write under /proc/sys.
type sysctl struct{ name, value string }

// writeSysctls writes each value under /proc/sys. /proc/sys/net resolves to the
// namespace of the thread that opens the file, so callers run it on a thread
// that has entered the target namespace.
func writeSysctls(ss []sysctl) error {
	for _, s := range ss {
		if err := os.WriteFile(filepath.Join("/proc/sys", s.name), []byte(s.value), 0); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", s.name, s.value, err)
		}
	}
	return nil
}

// inNetNS runs fn on a fresh goroutine locked to an OS thread that has entered
// the network namespace nsFD, then restores the thread. If the thread cannot be
// restored it stays locked, and the runtime discards it when the goroutine ends,
// so no other goroutine ever runs in the wrong namespace.
func inNetNS(nsFD int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open(threadNetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore thread's network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// errNotNetNS is a path that exists but is not a mounted namespace, such as a
// namespace file whose mount is gone.
var errNotNetNS = errors.New("not a network namespace (no nsfs mount)")

// openNetNS opens a network namespace file. The error says so when the path
// exists but is not a mounted namespace.
func openNetNS(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open network namespace", Path: path, Err: err}
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		unix.Close(fd)
		return -1, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	if st.Type != unix.NSFS_MAGIC {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %w", path, errNotNetNS)
	}
	return fd, nil
}

// isNetNS reports whether path is a mounted namespace (an nsfs file).
func isNetNS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// handleAt opens a rtnetlink handle in the namespace at path.
func handleAt(path string) (*netlink.Handle, error) {
	fd, err := openNetNS(path)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return handleAtFD(fd, path)
}

// handleAtFD opens a rtnetlink handle in the namespace nsFD (named path).
func handleAtFD(nsFD int, path string) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(netns.NsHandle(nsFD), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket in %s: %w", path, err)
	}
	return h, nil
}

var netnsDir struct {
	sync.Mutex
	ready bool
}

// ensureNetNSDir makes NetNSDir a shared mount point, as iproute2 does, so the
// namespaces mounted there are seen from every mount namespace.
func ensureNetNSDir() error {
	netnsDir.Lock()
	defer netnsDir.Unlock()
	if netnsDir.ready {
		return nil
	}
	if err := os.MkdirAll(NetNSDir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", NetNSDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(NetNSDir, NetNSDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s on itself: %w", NetNSDir, err)
		}
		err = unix.Mount("", NetNSDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", NetNSDir, err)
	}
	netnsDir.ready = true
	return nil
}

// newNetNS is a namespace just created by createNetNS.
type newNetNS struct {
	fd int             // the namespace
	h  *netlink.Handle // rtnetlink in the namespace
}

// createNetNS creates a network namespace and bind-mounts it at path, which
// must not be a mounted namespace already (an empty file left by a crash is
// reused). Before the namespace is mounted, and so before anyone else can see
// it, it writes the sysctls, sets lo up and sets lo's alias: a mounted sandbox
// namespace always carries its ID.
func createNetNS(path, loAlias string, sysctls []sysctl) (newNetNS, error) {
	if err := ensureNetNSDir(); err != nil {
		return newNetNS{}, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o444)
	if err != nil {
		return newNetNS{}, fmt.Errorf("create namespace file: %w", err)
	}
	f.Close()

	type result struct {
		ns  newNetNS
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open(threadNetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("open own network namespace: %w", err)}
			return
		}
		defer unix.Close(orig)
		ns, err := unshareAndMount(path, loAlias, sysctls)
		if rerr := unix.Setns(orig, unix.CLONE_NEWNET); rerr != nil {
			// Stay locked: the runtime ends this thread with the goroutine.
			if err == nil {
				ns.h.Close()
				unix.Close(ns.fd)
				unmountNetNS(path)
			}
			done <- result{err: errors.Join(err, fmt.Errorf("restore thread's network namespace: %w", rerr))}
			return
		}
		runtime.UnlockOSThread()
		done <- result{ns, err}
	}()
	r := <-done
	if r.err != nil {
		os.Remove(path)
	}
	return r.ns, r.err
}

// unshareAndMount runs on a locked thread: it moves the thread into a new
// network namespace, prepares it, and bind-mounts it at path.
func unshareAndMount(path, loAlias string, sysctls []sysctl) (newNetNS, error) {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return newNetNS{}, fmt.Errorf("unshare network namespace: %w", err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return newNetNS{}, fmt.Errorf("netlink socket: %w", err)
	}
	fail := func(err error) (newNetNS, error) {
		h.Close()
		return newNetNS{}, err
	}
	if err := writeSysctls(sysctls); err != nil {
		return fail(err)
	}
	lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1, Name: "lo"}}
	if err := h.LinkSetAlias(lo, loAlias); err != nil {
		return fail(fmt.Errorf("set alias of lo: %w", err))
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fail(fmt.Errorf("set lo up: %w", err))
	}
	fd, err := unix.Open(threadNetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail(fmt.Errorf("open new network namespace: %w", err))
	}
	if err := unix.Mount(threadNetNS, path, "none", unix.MS_BIND, ""); err != nil {
		unix.Close(fd)
		return fail(fmt.Errorf("bind-mount network namespace on %s: %w", path, err))
	}
	return newNetNS{fd: fd, h: h}, nil
}

// unmountNetNS detaches every mount on path, ignoring a path that is not a
// mount point or is absent.
func unmountNetNS(path string) error {
	for range 8 {
		err := unix.Unmount(path, unix.MNT_DETACH)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		default:
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 8 unmounts", path)
}

// removeNetNS unmounts and deletes a namespace file; absent is success.
func removeNetNS(path string) error {
	if err := unmountNetNS(path); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
