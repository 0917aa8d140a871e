package podroot

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
)

// pinDirs remembers the pin directories this process made private mounts.
var pinDirs struct {
	sync.Mutex
	ready map[string]bool
}

// ensurePinDir makes dir a mount of its own with private propagation, where
// mount namespaces can be pinned: a pin in a shared mount would propagate
// into the pinned namespace's own copy of it, which the kernel refuses (a
// namespace may not hold itself). A process-wide mutex and an flock beside
// dir keep two makers from mounting twice on it; the kernel's refusal to
// change the propagation of a path that is not a mount point tells whether
// it is one.
func ensurePinDir(dir string) error {
	pinDirs.Lock()
	defer pinDirs.Unlock()
	if pinDirs.ready[dir] {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pin directory: %w", err)
	}
	unlock, err := netns.LockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	err = unix.Mount("", dir, "none", unix.MS_PRIVATE, "")
	if errors.Is(err, unix.EINVAL) {
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount %s on itself: %w", dir, err)
		}
		err = unix.Mount("", dir, "none", unix.MS_PRIVATE, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a private mount: %w", dir, err)
	}
	if pinDirs.ready == nil {
		pinDirs.ready = map[string]bool{}
	}
	pinDirs.ready[dir] = true
	return nil
}
