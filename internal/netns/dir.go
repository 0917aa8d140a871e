package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// dirs remembers the directories this process has made shared mount points.
var dirs struct {
	sync.Mutex
	ready map[string]bool
}

// betweenCheckAndMount, when tests set it, runs between reading the mount
// table and mounting, to widen the window in which another process could
// mount too.
var betweenCheckAndMount func()

// EnsureDir makes Dir a shared mount point, as iproute2 does, so that the
// namespaces mounted in it are seen, and can be unmounted, from every mount
// namespace. Create calls it; whoever comes first does the work.
func EnsureDir() error { return ensureDir(Dir) }

// ensureDir makes dir a mount point of its own, shared. Within the process a
// mutex, across processes an flock on a lock file beside dir serialise it,
// and the mount table is read under the lock: dir is bind-mounted over itself
// only if it is not a mount point yet. A second mount over it would hide
// every namespace mounted in it before: they could no longer be unmounted or
// deleted through their paths.
func ensureDir(dir string) error {
	dirs.Lock()
	defer dirs.Unlock()
	if dirs.ready[dir] {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("namespace directory: %w", err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("namespace directory: %w", err)
	}
	unlock, err := LockDir(real)
	if err != nil {
		return err
	}
	defer unlock()
	// The kernel refuses to change the propagation of a path that is not
	// the root of a mount: that is the test of "already a mount point" (the
	// mount table would also list mounts hidden under others).
	err = unix.Mount("", real, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		if betweenCheckAndMount != nil {
			betweenCheckAndMount()
		}
		if err := bindOverItself(real); err != nil {
			return err
		}
		err = unix.Mount("", real, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", real, err)
	}
	if dirs.ready == nil {
		dirs.ready = map[string]bool{}
	}
	dirs.ready[dir] = true
	return nil
}

// LockDir takes the lock that serialises, across processes, making dir a
// mount point of its own (ensureDir here, podroot's pin directories): an
// flock on .NAME.duet-lock beside the directory (inside it, `ip netns list`
// would list the lock file as a namespace).
func LockDir(dir string) (unlock func(), err error) {
	path := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".duet-lock")
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "open lock file", Path: path, Err: err}
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "lock", Path: path, Err: err}
	}
	return func() { unix.Close(fd) }, nil
}

// bindOverItself makes dir, which is not a mount point, one: a recursive bind
// mount of itself. Namespaces already mounted in it (by a tool that does not
// share the directory) would end up under the new mount, reachable only
// through copies and impossible to delete by path; so they are held open,
// unmounted, and mounted again on the new mount.
func bindOverItself(dir string) (err error) {
	ms, err := readMounts()
	if err != nil {
		return fmt.Errorf("reading the mount table: %w", err)
	}
	// The mount dir lies on: namespaces mounted in dir are its children.
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, 0, unix.STATX_MNT_ID, &stx); err != nil {
		return &os.PathError{Op: "statx", Path: dir, Err: err}
	}
	type held struct {
		path string
		fd   int
	}
	var moved []held
	defer func() {
		for _, h := range moved {
			unix.Close(h.fd)
		}
	}()
	for _, m := range ms {
		if m.FSType != "nsfs" || filepath.Dir(m.MountPoint) != dir || uint64(m.Parent) != stx.Mnt_id {
			continue
		}
		if len(moved) > 0 && moved[len(moved)-1].path == m.MountPoint {
			continue // a stacked mount of one path: the top is held already
		}
		fd, err := Open(m.MountPoint)
		if err != nil {
			continue // not reachable through its path: nothing to carry over
		}
		moved = append(moved, held{m.MountPoint, fd})
		if err := Unmount(m.MountPoint); err != nil {
			return err
		}
	}
	if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		err = fmt.Errorf("bind-mount %s on itself: %w", dir, err)
		for _, h := range moved { // put them back where they were
			_ = unix.Mount(fdPath(h.fd), h.path, "none", unix.MS_BIND, "")
		}
		return err
	}
	var errs []error
	for _, h := range moved {
		if err := unix.Mount(fdPath(h.fd), h.path, "none", unix.MS_BIND, ""); err != nil {
			errs = append(errs, fmt.Errorf("mount namespace %s again on the shared %s: %w", h.path, dir, err))
		}
	}
	return errors.Join(errs...)
}

func fdPath(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }
