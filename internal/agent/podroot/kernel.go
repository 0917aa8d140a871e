package podroot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
)

// onThread runs fn on a new goroutine locked to its OS thread and never
// unlocked: the runtime ends the thread with the goroutine, so whatever
// namespaces, root or file system information fn gave the thread leave with
// it and no other goroutine ever runs there.
//
// The process's main thread is never ended (the runtime wedges it instead),
// and /proc/self names it: fn must not change it. A goroutine that lands
// there holds it while fn runs on another thread, and lets it go unchanged.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			errc <- fn()
			return
		}
		inner := make(chan error, 1)
		go func() {
			// This thread is locked: the goroutine starts on another one.
			runtime.LockOSThread()
			inner <- fn()
		}()
		err := <-inner
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// makeUTS pins a new UTS namespace whose hostname is hostname at pin.
func makeUTS(pin, hostname string) error {
	return onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
			return fmt.Errorf("new UTS namespace: %w", err)
		}
		if err := unix.Sethostname([]byte(hostname)); err != nil {
			return fmt.Errorf("set hostname %q: %w", hostname, err)
		}
		return pinNS("/proc/thread-self/ns/uts", pin)
	})
}

// pinNS bind-mounts the namespace file ns (a /proc path) on pin, an empty
// file it creates, so the namespace outlives every process in it.
func pinNS(ns, pin string) error {
	f, err := os.OpenFile(pin, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("namespace file: %w", err)
	}
	f.Close()
	if err := unix.Mount(ns, pin, "none", unix.MS_BIND, ""); err != nil {
		_ = os.Remove(pin)
		return fmt.Errorf("bind-mount %s on %s: %w", ns, pin, err)
	}
	return nil
}

// unpin unmounts a pinned namespace and deletes its file. Deleting the file
// also detaches copies of the mount in mount namespaces made since (a
// process that unshared its mount namespace holds copies of all of them).
func unpin(pin string) error {
	if err := netns.Unmount(pin); err != nil {
		return err
	}
	if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// isPinned reports whether path is a mounted namespace file.
func isPinned(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// Where things live inside the template namespace, under its scratch
// tmpfs (mounted on the pin directory, which the template does not need).
// Each container's root is in c.NAME.
const (
	scratchUpper = "upper"
	scratchWork  = "work"
	scratchRoot  = "root"
	scratchVol   = "vol"
)

// templatePlan is what the pod's template mount namespace is built from.
type templatePlan struct {
	// scratch is where the template mounts its tmpfs: the pin directory.
	scratch string
	// memory are the emptyDir volumes of medium Memory, by name, with their
	// size limits in bytes (0: the tmpfs default, half the memory).
	memory map[string]int64
}

// buildTemplate makes the pod's template mount namespace on a thread of its
// own and returns a file descriptor of it: a copy of the caller's mount
// table without pinned mount namespaces, with a scratch tmpfs holding the
// Memory emptyDirs, which the containers' namespaces, copies of the
// template, share. Nothing here is seen by the caller's mount namespace: its
// mounts are slaves of the caller's, never the other way round.
func buildTemplate(p templatePlan) (int, error) {
	fd := -1
	err := onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("new mount namespace: %w", err)
		}
		if err := unix.Mount("", "/", "none", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
			return fmt.Errorf("make mounts slaves: %w", err)
		}
		// Pinned mount namespaces (this agent's and others') cannot be
		// bound recursively, and the pod has no business with them.
		ms, err := netns.Mounts()
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.FSType == "nsfs" && strings.HasPrefix(m.Root, "mnt:[") {
				_ = unix.Unmount(m.MountPoint, unix.MNT_DETACH)
			}
		}
		_ = netns.Unmount(p.scratch)
		if err := unix.Mount("duet-podroot", p.scratch, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
			return fmt.Errorf("scratch tmpfs on %s: %w", p.scratch, err)
		}
		if err := os.Mkdir(filepath.Join(p.scratch, scratchVol), 0o755); err != nil {
			return err
		}
		for name, size := range p.memory {
			dir := filepath.Join(p.scratch, scratchVol, name)
			if err := os.Mkdir(dir, 0o777); err != nil {
				return err
			}
			opts := "mode=0777"
			if size > 0 {
				opts += fmt.Sprintf(",size=%d", size)
			}
			if err := unix.Mount("duet-emptydir", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
				return fmt.Errorf("tmpfs for emptyDir %s: %w", name, err)
			}
		}
		fd, err = unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, err
	}
	return fd, nil
}

// childrenOfRoot returns the mount points of the mounts on the root file
// system, without those hidden under another of them and without skip:
// binding each recursively brings every other mount along.
func childrenOfRoot(ms []netns.Mount, skip string) []string {
	id, err := mountIDAt("/")
	if err != nil {
		return nil
	}
	return childrenOf(ms, id, skip)
}

// childrenOf returns the mount points of the mounts on mount id, as
// childrenOfRoot does.
func childrenOf(ms []netns.Mount, id uint64, skip string) []string {
	var mps []string
	for _, m := range ms {
		if uint64(m.Parent) == id && uint64(m.ID) != id && m.MountPoint != "/" && m.MountPoint != skip {
			mps = append(mps, m.MountPoint)
		}
	}
	slices.Sort(mps)
	mps = slices.Compact(mps)
	return slices.DeleteFunc(mps, func(mp string) bool {
		return slices.ContainsFunc(mps, func(other string) bool { return other != mp && under(mp, other) })
	})
}

// under reports whether p lies strictly under dir.
func under(p, dir string) bool {
	return strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// bindPlan is one bind mount into a container's root.
type bindPlan struct {
	source, subPath string
	// createSub makes a missing subPath a directory (not in content
	// volumes, whose files are the API's).
	createSub bool
	target    string
	readOnly  bool
}

// buildContainer makes a container's mount namespace and returns a file
// descriptor of it: a copy of the template (tmplFD) with, on the scratch
// tmpfs, the container's root (an overlay of / with its own writable layer,
// so that what a container writes, mount points included, is its own, the
// other mounts of / bound in recursively), the pod's files and the
// container's volumes and image files bound on top, pivoted into that root.
//
// The kernel refuses to pin a mount namespace from a thread whose own mount
// namespace has an ID not below it (so that none can hold itself), and
// since Linux 6.18 IDs come from per-CPU batches: a namespace made later on
// another CPU may get a lower one. So the copy is made again, on the other
// CPUs in turn, until its ID is above pinnerID, the pinning thread's.
func buildContainer(tmplFD int, pinnerID uint64, scratch, name string, files [][2]string, binds []bindPlan) (int, error) {
	fd := -1
	err := onThread(func() error {
		// A thread sharing its file system information with others may not
		// enter a mount namespace.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			return fmt.Errorf("unshare file system information: %w", err)
		}
		if err := unix.Setns(tmplFD, unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("enter the pod's template mount namespace: %w", err)
		}
		if err := unshareAbove(tmplFD, pinnerID); err != nil {
			return err
		}
		dir := filepath.Join(scratch, "c."+name)
		for _, d := range []string{"", scratchUpper, scratchWork, scratchRoot} {
			if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
				return err
			}
		}
		root := filepath.Join(dir, scratchRoot)
		opts := fmt.Sprintf("lowerdir=/,upperdir=%s,workdir=%s", filepath.Join(dir, scratchUpper), filepath.Join(dir, scratchWork))
		if err := unix.Mount("duet-podroot", root, "overlay", 0, opts); err != nil {
			return fmt.Errorf("overlay of / on %s: %w", root, err)
		}
		ms, err := netns.Mounts()
		if err != nil {
			return err
		}
		for _, mp := range childrenOfRoot(ms, scratch) {
			if err := unix.Mount(mp, filepath.Join(root, mp), "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("bind %s into the container's root: %w", mp, err)
			}
		}
		// A recursive bind of the mount holding the scratch brought a copy of
		// the scratch along.
		_ = netns.Unmount(filepath.Join(root, scratch))
		rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(rootFD)
		w := &world{rootFD: rootFD, rootPath: root, scratch: dir}
		if w.rootMnt, err = mountID(rootFD); err != nil {
			return err
		}
		for _, f := range files {
			if err := w.bind(f[0], "", f[1], false); err != nil {
				return err
			}
		}
		for _, b := range binds {
			if b.createSub && b.subPath != "" {
				if err := mkdirIn(b.source, b.subPath); err != nil {
					return err
				}
			}
			if err := w.bind(b.source, b.subPath, b.target, b.readOnly); err != nil {
				return err
			}
		}
		if err := unix.Fchdir(rootFD); err != nil {
			return err
		}
		// The old root ends up on top of the new one, and is detached.
		if err := unix.PivotRoot(".", "."); err != nil {
			return fmt.Errorf("pivot_root into %s: %w", root, err)
		}
		if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
			return fmt.Errorf("detach the old root: %w", err)
		}
		if err := unix.Chdir("/"); err != nil {
			return err
		}
		fd, err = unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, err
	}
	return fd, nil
}

// unshareAbove moves the calling thread, in the template namespace
// tmplFD, into a new copy of it whose ID is above min (see buildContainer).
func unshareAbove(tmplFD int, min uint64) error {
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		return fmt.Errorf("CPU affinity: %w", err)
	}
	var ids []uint64
	for cpu := 0; ; cpu++ {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("new mount namespace: %w", err)
		}
		id, ok := MountNSID("/proc/thread-self/ns/mnt")
		if !ok || id > min {
			return nil
		}
		ids = append(ids, id)
		for cpu < 1024 && !cpus.IsSet(cpu) {
			cpu++
		}
		if cpu >= 1024 {
			return fmt.Errorf("new mount namespaces got IDs %v on every CPU, none above the agent's %d: it could not pin them", ids, min)
		}
		if err := unix.Setns(tmplFD, unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("back to the pod's template mount namespace: %w", err)
		}
		var one unix.CPUSet
		one.Set(cpu)
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			return fmt.Errorf("CPU affinity: %w", err)
		}
	}
}

// MountNSID is the ID of the mount namespace at path (NS_GET_MNTNS_ID,
// Linux 6.10 on); false when the kernel does not tell.
func MountNSID(path string) (uint64, bool) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer unix.Close(fd)
	var id uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.NS_GET_MNTNS_ID, uintptr(unsafe.Pointer(&id))); e != 0 {
		return 0, false
	}
	return id, true
}

// world is a pod's root being built, open.
type world struct {
	rootFD int
	// rootMnt and ours are the mounts in which mount points may be
	// created: the overlay and the volumes bound so far. Creating one
	// anywhere else would write to a host file system bound in.
	rootMnt uint64
	ours    []uint64
	// rootPath and scratch, when set, let ensure put an overlay of the
	// container's own (its layers in scratch) over a host file system
	// bound in (such as /run on systemd machines) that a mount point must
	// be created on, as the root itself is one. Without them such a mount
	// point is refused.
	rootPath, scratch string
	overlays          int
}

// overlayHostMount puts an overlay over the host mount id, bound in the
// container's root: the host's files below, a writable layer of the
// container's own above. The mounts on top of it (the host's and the
// volumes bound so far) are cloned first and put back on the overlay.
func (w *world) overlayHostMount(id uint64) error {
	ms, err := netns.Mounts()
	if err != nil {
		return err
	}
	var mp string
	for _, m := range ms {
		if uint64(m.ID) == id {
			mp = m.MountPoint
		}
	}
	if mp == "" || (mp != w.rootPath && !under(mp, w.rootPath)) {
		return fmt.Errorf("mount %d is not in the container's root", id)
	}
	type child struct {
		path string
		tree int
		ours bool
	}
	var children []child
	defer func() {
		for _, c := range children {
			unix.Close(c.tree)
		}
	}()
	for _, cmp := range childrenOf(ms, id, "") {
		tree, err := unix.OpenTree(unix.AT_FDCWD, cmp, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
		if err != nil {
			return fmt.Errorf("copy mount %s: %w", cmp, err)
		}
		c := child{path: cmp, tree: tree}
		if old, err := mountIDAt(cmp); err == nil && slices.Contains(w.ours, old) {
			c.ours = true
		}
		children = append(children, c)
	}
	w.overlays++
	dir := filepath.Join(w.scratch, fmt.Sprintf("ov.%d", w.overlays))
	for _, d := range []string{"", scratchUpper, scratchWork} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", mp, filepath.Join(dir, scratchUpper), filepath.Join(dir, scratchWork))
	if err := unix.Mount("duet-podroot", mp, "overlay", 0, opts); err != nil {
		return fmt.Errorf("overlay of %s: %w", strings.TrimPrefix(mp, w.rootPath), err)
	}
	ovID, err := mountIDAt(mp)
	if err != nil {
		return err
	}
	w.ours = append(w.ours, ovID)
	for _, c := range children {
		if err := unix.MoveMount(c.tree, "", unix.AT_FDCWD, c.path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("put %s back on the overlay: %w", strings.TrimPrefix(c.path, w.rootPath), err)
		}
		if c.ours {
			if nid, err := mountID(c.tree); err == nil {
				w.ours = append(w.ours, nid)
			}
		}
	}
	return nil
}

func mountIDAt(path string) (uint64, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &st); err != nil {
		return 0, fmt.Errorf("statx %s: %w", path, err)
	}
	return st.Mnt_id, nil
}

func mountID(fd int) (uint64, error) {
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &st); err != nil {
		return 0, fmt.Errorf("statx: %w", err)
	}
	return st.Mnt_id, nil
}

// resolveFlags resolve a path inside a root as if it were /, symbolic
// links included.
const resolveFlags = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

func openIn(rootFD int, rel string) (int, error) {
	return unix.Openat2(rootFD, rel, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: resolveFlags})
}

// bind mounts source (a path in the caller's view; subPath resolved inside
// it) on target, a path in the pod's root, creating target as a directory
// or an empty file to match the source.
func (w *world) bind(source, subPath, target string, readOnly bool) error {
	srcFD, err := unix.Open(source, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open bind source", Path: source, Err: err}
	}
	defer unix.Close(srcFD)
	if subPath != "" {
		sub, err := openIn(srcFD, subPath)
		if err != nil {
			return &os.PathError{Op: "open subPath in " + source, Path: subPath, Err: err}
		}
		unix.Close(srcFD)
		srcFD = sub
	}
	var st unix.Stat_t
	if err := unix.Fstat(srcFD, &st); err != nil {
		return err
	}
	dstFD, err := w.ensure(target, st.Mode&unix.S_IFMT == unix.S_IFDIR)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", target, err)
	}
	defer unix.Close(dstFD)
	tree, err := unix.OpenTree(srcFD, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("copy mount of %s: %w", source, err)
	}
	defer unix.Close(tree)
	if readOnly {
		attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr); err != nil {
			return fmt.Errorf("make %s read-only: %w", target, err)
		}
	}
	if err := unix.MoveMount(tree, "", dstFD, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount %s on %s: %w", source, target, err)
	}
	if id, err := mountID(tree); err == nil {
		w.ours = append(w.ours, id)
	}
	return nil
}

// ensure opens path in the pod's root, creating it (and its parents) if
// missing, as a directory or an empty file. A dangling symbolic link in the
// way is replaced.
func (w *world) ensure(path string, dir bool) (int, error) {
	rel := strings.TrimPrefix(filepath.Clean("/"+path), "/")
	if rel == "" {
		return unix.Openat(w.rootFD, ".", unix.O_PATH|unix.O_CLOEXEC, 0)
	}
	fd, err := openIn(w.rootFD, rel)
	if err == nil || !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	parent, err := w.ensure(filepath.Dir(rel), true)
	if err != nil {
		return -1, err
	}
	defer unix.Close(parent)
	id, err := mountID(parent)
	if err != nil {
		return -1, err
	}
	if id != w.rootMnt && !slices.Contains(w.ours, id) && w.scratch != "" {
		unix.Close(parent)
		if err := w.overlayHostMount(id); err != nil {
			return -1, fmt.Errorf("%s lies on a file system bound in from the host: %w", "/"+filepath.Dir(rel), err)
		}
		if parent, err = openIn(w.rootFD, filepath.Dir(rel)); err != nil {
			return -1, err
		}
		if id, err = mountID(parent); err != nil {
			return -1, err
		}
	}
	if id != w.rootMnt && !slices.Contains(w.ours, id) {
		return -1, fmt.Errorf("%s would be created on a file system bound in from the host, which the pod must not change", "/"+rel)
	}
	base := filepath.Base(rel)
	create := func() error {
		if dir {
			return unix.Mkdirat(parent, base, 0o755)
		}
		f, err := unix.Openat(parent, base, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err == nil {
			unix.Close(f)
		}
		return err
	}
	if err := create(); errors.Is(err, unix.EEXIST) {
		// A dangling link: the pod's own file replaces it.
		if err := unix.Unlinkat(parent, base, 0); err != nil {
			return -1, err
		}
		err = create()
		if err != nil {
			return -1, err
		}
	} else if err != nil {
		return -1, err
	}
	return openIn(w.rootFD, rel)
}

// mkdirIn creates the directory sub (and its parents) inside dir, resolving
// inside dir only.
func mkdirIn(dir, sub string) error {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	w := &world{rootFD: fd}
	if w.rootMnt, err = mountID(fd); err != nil {
		return err
	}
	d, err := w.ensure(sub, true)
	if err != nil {
		return fmt.Errorf("subPath %s in %s: %w", sub, dir, err)
	}
	unix.Close(d)
	return nil
}
