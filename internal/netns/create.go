package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Prep is what Create does inside a new namespace before mounting it, so
// that nobody sees the namespace half-made. lo is always set up.
type Prep struct {
	// Sysctls are written under /proc/sys, in order.
	Sysctls []Sysctl
	// LoAlias, if not empty, becomes the alias of lo.
	LoAlias string
	// Prepare, if set, runs last, inside the namespace, with a rtnetlink
	// handle in it.
	Prepare func(h *netlink.Handle) error
}

// NS is a namespace Create made, open: its file descriptor and a rtnetlink
// handle in it. The caller closes it.
type NS struct {
	FD     int
	Handle *netlink.Handle
}

// Close closes the handle and the file descriptor.
func (n NS) Close() {
	if n.Handle != nil {
		n.Handle.Close()
	}
	unix.Close(n.FD)
}

// Create makes a network namespace, prepares it as p says, and only then
// bind-mounts it at path, after making path's directory a shared mount point
// (see EnsureDir). An empty file at path, as a crash between creating the file
// and mounting leaves, is reused; a namespace already mounted there is an
// error wrapping fs.ErrExist, and is left alone. On any other failure nothing
// is left at path.
func Create(path string, p Prep) (NS, error) {
	if err := ensureDir(filepath.Dir(path)); err != nil {
		return NS{}, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o444)
	if err != nil {
		return NS{}, fmt.Errorf("create namespace file: %w", err)
	}
	defer f.Close()
	// The lock keeps two creators of one path from mounting twice on it.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return NS{}, &os.PathError{Op: "lock", Path: path, Err: err}
	}
	if IsNetNS(path) {
		return NS{}, &os.PathError{Op: "create network namespace", Path: path, Err: fs.ErrExist}
	}
	if st, err := f.Stat(); err != nil {
		return NS{}, err
	} else if !st.Mode().IsRegular() || st.Size() != 0 {
		return NS{}, fmt.Errorf("%s exists and is not an empty file: not overwriting it with a namespace", path)
	}

	type result struct {
		ns  NS
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
		ns, err := unshareAndMount(path, p)
		if rerr := setns(orig, unix.CLONE_NEWNET); rerr != nil {
			// Stay locked: the runtime ends this thread with the goroutine.
			if err == nil {
				ns.Close()
				_ = Unmount(path)
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
		return NS{}, fmt.Errorf("network namespace %s: %w", path, r.err)
	}
	return r.ns, nil
}

// unshareAndMount runs on a locked thread: it moves the thread into a new
// network namespace, prepares it, and bind-mounts it at path.
func unshareAndMount(path string, p Prep) (NS, error) {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return NS{}, fmt.Errorf("unshare: %w", err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return NS{}, fmt.Errorf("netlink socket: %w", err)
	}
	fail := func(err error) (NS, error) {
		h.Close()
		return NS{}, err
	}
	if err := WriteSysctls(p.Sysctls); err != nil {
		return fail(err)
	}
	lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1, Name: "lo"}}
	if p.LoAlias != "" {
		if err := h.LinkSetAlias(lo, p.LoAlias); err != nil {
			return fail(fmt.Errorf("set alias of lo: %w", err))
		}
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fail(fmt.Errorf("set lo up: %w", err))
	}
	if p.Prepare != nil {
		if err := p.Prepare(h); err != nil {
			return fail(err)
		}
	}
	fd, err := unix.Open(threadNetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail(fmt.Errorf("open new network namespace: %w", err))
	}
	if err := unix.Mount(threadNetNS, path, "none", unix.MS_BIND, ""); err != nil {
		unix.Close(fd)
		return fail(fmt.Errorf("bind-mount on %s: %w", path, err))
	}
	return NS{FD: fd, Handle: h}, nil
}
