package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Unmount detaches every mount stacked on path and leaves the file; a path
// that is not a mount point, or is absent, is fine.
func Unmount(path string) error {
	for range 16 {
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
	return fmt.Errorf("unmount %s: still mounted after 16 unmounts", path)
}

// Remove unmounts the namespace at path and deletes the file; absent is
// success. Mounts of it hidden under a later mount of its directory (which
// earlier versions of Duet made: the directory bind-mounted over itself after
// namespaces were mounted in it) are removed too, without touching anything
// else in the directory.
func Remove(path string) error {
	if err := Unmount(path); err != nil {
		return err
	}
	err := unix.Unlink(path)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EBUSY):
		// Still a mount point in this mount namespace, under the
		// directory's top mount.
		return removeHidden(path)
	case errors.Is(err, unix.ENOENT):
		// Gone from the visible directory; a mount may still be hidden
		// on a file of a lower layer.
		if hidden, herr := isMountPoint(path); herr == nil && hidden {
			return removeHidden(path)
		}
		return nil
	default:
		return &os.PathError{Op: "remove network namespace", Path: path, Err: err}
	}
}

// isMountPoint reports whether anything is mounted on path in this mount
// namespace, hidden or not.
func isMountPoint(path string) (bool, error) {
	real := resolveDir(path)
	ms, err := readMounts()
	if err != nil {
		return false, err
	}
	return len(mountsAt(ms, real)) > 0, nil
}

// resolveDir resolves symbolic links in path's directory (/var/run/netns is
// /run/netns), not in its last element.
func resolveDir(path string) string {
	if dir, err := filepath.EvalSymlinks(filepath.Dir(path)); err == nil {
		return filepath.Join(dir, filepath.Base(path))
	}
	return filepath.Clean(path)
}

// removeHidden removes a namespace mounted on path under another mount of
// path's directory. From a thread with a private copy of the mount table, it
// unmounts the directory's mounts there (in that copy only), which reveals
// the lower layers, unmounts path's mounts, and deletes the file. Deleting a
// file detaches the mounts on it in every mount namespace, so the hidden
// mounts of the caller's namespace go with it, while the other namespaces
// in the directory stay where they are. The thread is never unlocked: it
// ends with its goroutine, and its mount namespace with it.
func removeHidden(path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("private mount namespace: %w", err)
			}
			// Unmounts must not propagate back to the caller's namespace.
			if err := unix.Mount("", "/", "none", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return fmt.Errorf("make mounts private: %w", err)
			}
			real := resolveDir(path)
			for range 16 {
				if unix.Unmount(filepath.Dir(real), unix.MNT_DETACH) != nil {
					break
				}
			}
			if err := Unmount(real); err != nil {
				return err
			}
			if err := unix.Unlink(real); err != nil && !errors.Is(err, unix.ENOENT) {
				return &os.PathError{Op: "remove network namespace", Path: path, Err: err}
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("removing %s hidden under a second mount of %s: %w", path, filepath.Dir(path), err)
	}
	if hidden, err := isMountPoint(path); err == nil && hidden {
		return fmt.Errorf("%s: still mounted after removing it", path)
	}
	return nil
}

// List returns the names of the namespaces in Dir: its files, and the
// namespaces mounted there but hidden under a second mount of it. Names
// starting with a dot are not namespaces.
func List() ([]string, error) { return list(Dir) }

func list(dir string) ([]string, error) {
	var names []string
	des, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, de := range des {
		names = append(names, de.Name())
	}
	real := resolveDir(filepath.Join(dir, "x"))
	ms, err := readMounts()
	if err != nil {
		return nil, fmt.Errorf("reading the mount table: %w", err)
	}
	for _, m := range ms {
		if m.FSType == "nsfs" && filepath.Dir(m.MountPoint) == filepath.Dir(real) {
			names = append(names, filepath.Base(m.MountPoint))
		}
	}
	names = slices.DeleteFunc(names, func(n string) bool { return strings.HasPrefix(n, ".") })
	slices.Sort(names)
	return slices.Compact(names), nil
}
