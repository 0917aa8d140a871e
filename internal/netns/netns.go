// Package netns is the one owner of named network namespaces in Duet: the
// directory they are mounted in and its shared mount, creating a namespace
// (prepared before it becomes visible), entering one to run code, opening
// one for netlink, and removing one, including mounts an earlier version of
// Duet left hidden under a second mount of the directory.
//
// Every entry into a namespace happens on a fresh goroutine locked to its OS
// thread. A thread that cannot be moved back to the namespace it came from is
// never unlocked, so the runtime ends it with its goroutine instead of running
// other goroutines on it in the wrong namespace.
//
// No other package of Duet calls setns, unshare or mount for network
// namespaces; libraries that take a namespace file descriptor (netlink's
// PeerNamespace, google/nftables' WithNetNSFd) get one from Open.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces are mounted, as iproute2 does, so
// they outlive their creator and show in `ip netns list`.
const Dir = "/run/netns"

// Path is where the namespace called name is mounted.
func Path(name string) string { return filepath.Join(Dir, name) }

// threadNetNS names the calling thread's own network namespace.
const threadNetNS = "/proc/thread-self/ns/net"

// ErrNotNetNS is a path that exists but is not a mounted network namespace,
// such as a namespace file whose mount is gone.
var ErrNotNetNS = errors.New("not a network namespace (no nsfs mount)")

// setns is unix.Setns; tests replace it to make leaving a namespace fail.
var setns = unix.Setns

// Open opens the namespace at path and returns its file descriptor, which
// the caller closes. The error wraps ErrNotNetNS when the path exists but is
// not a mounted namespace, and fs.ErrNotExist when it does not exist.
func Open(path string) (int, error) {
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
		return -1, fmt.Errorf("%s: %w", path, ErrNotNetNS)
	}
	return fd, nil
}

// IsNetNS reports whether path is a mounted namespace (an nsfs file).
func IsNetNS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// Do runs fn in the network namespace at path (see DoFD).
func Do(path string, fn func() error) error {
	fd, err := Open(path)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := DoFD(fd, fn); err != nil {
		return fmt.Errorf("in network namespace %s: %w", path, err)
	}
	return nil
}

// DoFD runs fn on a fresh goroutine locked to an OS thread that has entered
// the network namespace nsFD, and returns fn's error. Sockets fn opens stay in
// that namespace; files under /proc/sys/net that fn opens are the namespace's.
// Afterwards the thread returns to its own namespace; if it cannot, it stays
// locked and the runtime ends it with the goroutine.
func DoFD(nsFD int, fn func() error) error {
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
		if err := setns(nsFD, unix.CLONE_NEWNET); err != nil {
			// Where a failed setns leaves the thread is not worth guessing:
			// it stays locked and ends with the goroutine.
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore thread's network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// NewHandle opens a netlink handle in the namespace at path, for the given
// netlink protocols (rtnetlink if none). Its sockets stay in that namespace.
func NewHandle(path string, protocols ...int) (*netlink.Handle, error) {
	fd, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	h, err := NewHandleFD(fd, protocols...)
	if err != nil {
		return nil, fmt.Errorf("netlink socket in %s: %w", path, err)
	}
	return h, nil
}

// NewHandleFD opens a netlink handle in the namespace nsFD (see NewHandle).
func NewHandleFD(nsFD int, protocols ...int) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := DoFD(nsFD, func() error {
		var err error
		h, err = netlink.NewHandle(protocols...)
		return err
	})
	if err != nil {
		if h != nil {
			h.Close()
		}
		return nil, err
	}
	return h, nil
}

// Sysctl is one value under /proc/sys, such as net/ipv4/ip_forward=1.
type Sysctl struct{ Name, Value string }

// WriteSysctls writes each value under /proc/sys. /proc/sys/net resolves to
// the namespace of the thread that opens the file, so callers run it inside
// Do or DoFD, or in a Prep.
func WriteSysctls(ss []Sysctl) error {
	for _, s := range ss {
		if err := os.WriteFile(filepath.Join("/proc/sys", s.Name), []byte(s.Value), 0); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", s.Name, s.Value, err)
		}
	}
	return nil
}

// Exec replaces the process with the program at binary (argv, env) running
// in the network namespace at path. It returns only on failure; the calling
// thread is then back in its own namespace, or stays locked to the calling
// goroutine, and the caller should exit.
func Exec(path, binary string, argv, env []string) error {
	fd, err := Open(path)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	runtime.LockOSThread()
	orig, err := unix.Open(threadNetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own network namespace: %w", err)
	}
	defer unix.Close(orig)
	if err := setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("entering network namespace %s: %w", path, err)
	}
	// execve keeps the calling thread's namespaces for the new program.
	err = unix.Exec(binary, argv, env)
	if rerr := setns(orig, unix.CLONE_NEWNET); rerr == nil {
		runtime.UnlockOSThread()
	}
	return fmt.Errorf("exec %s in %s: %w", binary, path, err)
}
