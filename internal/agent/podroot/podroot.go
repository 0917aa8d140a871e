// Package podroot gives each pod its own world on the host's file system
// without changing it: a UTS namespace with the pod's hostname, and per
// container a mount namespace whose root is the host's tree under a
// writable overlay (on a tmpfs of the pod's), with the host's other mounts
// bound in, the pod's own /etc/hosts, /etc/resolv.conf and /etc/hostname,
// its volumes at any mountPath, and the image's files. Containers, exec and
// probes enter it with nsenter (EnterArgs); the network namespace stays the
// sandbox's.
//
// Namespaces are pinned by bind mounts of their /proc files in a directory
// of the agent's state (StateDir/podroot/ns), made a private mount of its
// own so that the pins propagate nowhere (a mount namespace cannot be
// pinned where it would see itself). Pins need no process: a world outlives
// an agent killed with SIGKILL, a restarted agent finds it again (Create
// reuses a complete one, List and Remove find every one), and `duet down`
// removes them all (RemoveAll). A holder process would have to be found,
// trusted and reaped after a crash, and killing it would not undo the pins
// of namespaces another process entered.
//
// How a container's mount namespace is made, on fresh OS threads that never
// go back to the Go scheduler: a template namespace, a slave copy of the
// agent's (nothing propagates back to the host) without its pinned mount
// namespaces, mounts a tmpfs on the pin directory and the Memory emptyDirs
// on it. Each container's namespace is a copy of the template that mounts
// on that tmpfs an overlay with lowerdir=/ and its own upper and work
// directories (a container's writes, mount points included, are its own,
// as its root file system would be), binds the host's other mounts (/proc,
// /sys, /dev, /run, ...) recursively into it, then the pod's files, the
// container's volumes and its image files, and pivots into it, the old root
// detached. The template is not pinned; the containers' copies keep what
// they need of it.
//
// Content volumes (configMap, secret, downwardAPI, projected) are written
// by the agent in StateDir/podroot/pods/UID/volumes/NAME in the kubelet's
// layout (a ..data link swapped at once on update), disk emptyDirs are
// directories beside them; both are bound into the containers' roots.
package podroot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/duet-net/duet/internal/netns"
)

// Spec is what a pod's world is made from: the pod's fields that shape it
// and what the agent resolved for it (addresses, DNS servers, volume
// contents), so that this package needs no API client.
type Spec struct {
	// UID names the world; one per pod UID.
	UID       string
	Namespace string
	Name      string
	// Hostname, HostnameOverride, Subdomain and SetHostnameAsFQDN are the
	// pod's spec fields of those names.
	Hostname          string
	HostnameOverride  string
	Subdomain         string
	SetHostnameAsFQDN bool
	// HostNetwork pods get the node's name as hostname and the node's
	// hosts file; their network namespace is the node's.
	HostNetwork bool
	NodeName    string
	// Addrs are the pod's addresses, primary family first.
	Addrs       []netip.Addr
	HostAliases []corev1.HostAlias
	DNSPolicy   corev1.DNSPolicy
	DNSConfig   *corev1.PodDNSConfig
	// ClusterDNS are the kube-dns Service's cluster IPs, primary family
	// first; without any, ClusterFirst uses the host's resolvers.
	ClusterDNS []netip.Addr
	// ClusterDomain defaults to cluster.local.
	ClusterDomain string
	// HostResolvConf and HostHosts are the node's files, by default
	// /etc/resolv.conf and /etc/hosts.
	HostResolvConf, HostHosts string
	Volumes                   []Volume
	Containers                []Container
}

// Volume is one of the pod's volumes: an emptyDir, a host path, or else a
// content volume whose files the agent resolved.
type Volume struct {
	Name     string
	EmptyDir *EmptyDir
	HostPath string
	// Files are a content volume's (configMap, secret, downwardAPI,
	// projected) files by relative path; nil is an empty volume.
	Files map[string]File
}

// EmptyDir is an emptyDir volume: a directory in the pod's state, or a
// tmpfs with medium Memory.
type EmptyDir struct {
	Medium    corev1.StorageMedium
	SizeLimit int64 // bytes; 0 for none (a tmpfs then takes half the memory)
}

func (v Volume) content() bool { return v.EmptyDir == nil && v.HostPath == "" }

// Container is one container's part of the world.
type Container struct {
	Name string
	// Mounts are its volumeMounts; subPathExpr must already be expanded
	// into SubPath.
	Mounts []corev1.VolumeMount
	// ImageFiles are bound read-only into its root: the image's files.
	ImageFiles []ImageFile
}

// ImageFile is a host file that a container's image has at Path.
type ImageFile struct {
	Path   string // in the container, absolute
	Source string // on the host
}

// Root is a pod's world.
type Root struct {
	UID      string
	Hostname string
	base     string
	// containers in the spec's order.
	containers []string
	volumes    map[string]bool // content volumes, by name
}

// Layout under StateDir.
const (
	dirName  = "podroot"
	pinsName = "ns"
	podsName = "pods"
	metaName = "world.json"
	utsPin   = "uts"
)

func base(stateDir string) string          { return filepath.Join(stateDir, dirName) }
func pinDir(stateDir string) string        { return filepath.Join(base(stateDir), pinsName) }
func podPins(stateDir, uid string) string  { return filepath.Join(pinDir(stateDir), uid) }
func podState(stateDir, uid string) string { return filepath.Join(base(stateDir), podsName, uid) }
func containerPin(name string) string      { return "c." + name }

// EnterArgs are nsenter's arguments that enter the container's world: its
// UTS and mount namespaces. An unknown container gets the first one's.
func (r *Root) EnterArgs(container string) []string {
	if !slices.Contains(r.containers, container) {
		container = r.containers[0]
	}
	pins := filepath.Join(r.base, pinsName, r.UID)
	return []string{"--uts=" + filepath.Join(pins, utsPin), "--mount=" + filepath.Join(pins, containerPin(container))}
}

// Update writes new content of the pod's content volumes (configMap,
// secret, downwardAPI, projected), each swapped in at once; volumes that are
// not content volumes of the world are ignored. Files under subPath mounts
// do not change, as in Kubernetes. A world removed meanwhile is not made
// again.
func (r *Root) Update(volumes []Volume) error {
	defer lockUID(r.UID)()
	if _, err := os.Stat(filepath.Join(r.base, podsName, r.UID, metaName)); err != nil {
		return fmt.Errorf("updating the volumes of pod %s: %w", r.UID, err)
	}
	var errs []error
	for _, v := range volumes {
		if !v.content() || !r.volumes[v.Name] {
			continue
		}
		if _, err := writeAtomic(filepath.Join(r.base, podsName, r.UID, "volumes", v.Name), v.Files); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", v.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Remove removes the world (see Remove).
func (r *Root) Remove() error { return Remove(filepath.Dir(r.base), r.UID) }

// meta is what a world records about itself, last, when it is complete: a
// later Create reuses the world when it would build the same one.
type meta struct {
	Hostname   string       `json:"hostname"`
	Containers []Container  `json:"containers"`
	Volumes    []metaVolume `json:"volumes"`
	Files      []string     `json:"files"`
}

type metaVolume struct {
	Name     string    `json:"name"`
	EmptyDir *EmptyDir `json:"emptyDir,omitempty"`
	HostPath string    `json:"hostPath,omitempty"`
}

// locks serialises the calls for one UID within the process.
var locks struct {
	sync.Mutex
	m map[string]*sync.Mutex
}

func lockUID(uid string) func() {
	locks.Lock()
	if locks.m == nil {
		locks.m = map[string]*sync.Mutex{}
	}
	l, ok := locks.m[uid]
	if !ok {
		l = &sync.Mutex{}
		locks.m[uid] = l
	}
	locks.Unlock()
	l.Lock()
	return l.Unlock
}

// Create makes the pod's world under stateDir, or reuses the complete one
// a previous run made for the same UID with the same shape (its files and
// content volumes written anew). Anything else there for the UID, such as a
// world half-made when the agent was killed, is removed first. On failure
// nothing is left.
func Create(ctx context.Context, stateDir string, s *Spec) (_ *Root, err error) {
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", s.Namespace, s.Name, err)
	}
	names, err := PodNames(s)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", s.Namespace, s.Name, err)
	}
	files := podFiles
	stateDir, err = filepath.Abs(stateDir)
	if err != nil {
		return nil, err
	}
	defer lockUID(s.UID)()
	r := &Root{UID: s.UID, Hostname: names.Hostname, base: base(stateDir), volumes: map[string]bool{}}
	for _, c := range s.Containers {
		r.containers = append(r.containers, c.Name)
	}
	for _, v := range s.Volumes {
		if v.content() {
			r.volumes[v.Name] = true
		}
	}
	m := s.meta(names, files)
	state := podState(stateDir, s.UID)
	if complete(stateDir, s.UID, m) {
		if err := writeState(state, s, files); err != nil {
			return nil, fmt.Errorf("pod %s/%s: %w", s.Namespace, s.Name, err)
		}
		return r, nil
	}
	if err := remove(stateDir, s.UID); err != nil {
		return nil, fmt.Errorf("removing what is left of pod %s/%s's world: %w", s.Namespace, s.Name, err)
	}
	defer func() {
		if err != nil {
			if rerr := remove(stateDir, s.UID); rerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", rerr))
			}
			err = fmt.Errorf("pod %s/%s: %w", s.Namespace, s.Name, err)
		}
	}()
	if err := ensurePinDir(pinDir(stateDir)); err != nil {
		return nil, err
	}
	if err := writeState(state, s, files); err != nil {
		return nil, err
	}
	pins := podPins(stateDir, s.UID)
	if err := os.MkdirAll(pins, 0o700); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := makeUTS(filepath.Join(pins, utsPin), names.Hostname); err != nil {
		return nil, err
	}
	plan := templatePlan{scratch: pinDir(stateDir), memory: map[string]int64{}}
	var etc [][2]string // host file → in-pod path
	for _, f := range files {
		etc = append(etc, [2]string{filepath.Join(state, "etc", path.Base(f)), f})
	}
	for _, v := range s.Volumes {
		if v.EmptyDir != nil && v.EmptyDir.Medium == corev1.StorageMediumMemory {
			plan.memory[v.Name] = v.EmptyDir.SizeLimit
		}
	}
	tmpl, err := buildTemplate(plan)
	if err != nil {
		return nil, err
	}
	defer unix.Close(tmpl)
	// Pins are mounted from this goroutine's thread, in the agent's mount
	// namespace, as every thread but those of onThread is.
	pinner, _ := MountNSID("/proc/thread-self/ns/mnt")
	for _, c := range s.Containers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fd, err := buildContainer(tmpl, pinner, plan.scratch, c.Name, etc, s.binds(state, plan.scratch, c))
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", c.Name, err)
		}
		err = pinNS(fmt.Sprintf("/proc/self/fd/%d", fd), filepath.Join(pins, containerPin(c.Name)))
		unix.Close(fd)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", c.Name, err)
		}
	}
	data, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(state, metaName), data, 0o600); err != nil {
		return nil, err
	}
	return r, nil
}

// podFiles are the in-pod paths of the pod's own files.
var podFiles = []string{"/etc/hosts", "/etc/resolv.conf", "/etc/hostname"}

func (s *Spec) meta(n Names, files []string) meta {
	m := meta{Hostname: n.Hostname, Containers: s.Containers, Files: files}
	for _, v := range s.Volumes {
		m.Volumes = append(m.Volumes, metaVolume{Name: v.Name, EmptyDir: v.EmptyDir, HostPath: v.HostPath})
	}
	return m
}

// complete reports whether the world of uid is whole and of the shape m.
func complete(stateDir, uid string, m meta) bool {
	data, err := os.ReadFile(filepath.Join(podState(stateDir, uid), metaName))
	if err != nil {
		return false
	}
	want, err := json.Marshal(m)
	if err != nil || !bytes.Equal(data, want) {
		return false
	}
	pins := podPins(stateDir, uid)
	if !isPinned(filepath.Join(pins, utsPin)) {
		return false
	}
	for _, c := range m.Containers {
		if !isPinned(filepath.Join(pins, containerPin(c.Name))) {
			return false
		}
	}
	return true
}

// writeState writes the pod's files and its volumes' directories and
// content. The files are written in place: they are bound into the pod by
// inode.
func writeState(state string, s *Spec, files []string) error {
	names, err := PodNames(s)
	if err != nil {
		return err
	}
	hosts, resolv, err := renderFiles(s, names)
	if err != nil {
		return err
	}
	etc := filepath.Join(state, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return err
	}
	content := map[string][]byte{"/etc/hosts": hosts, "/etc/resolv.conf": resolv, "/etc/hostname": []byte(names.Hostname + "\n")}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(etc, path.Base(f)), content[f], 0o644); err != nil {
			return err
		}
	}
	for _, v := range s.Volumes {
		dir := filepath.Join(state, "volumes", v.Name)
		switch {
		case v.HostPath != "":
		case v.EmptyDir != nil:
			if v.EmptyDir.Medium != corev1.StorageMediumMemory {
				if err := os.MkdirAll(dir, 0o777); err != nil {
					return err
				}
				if err := os.Chmod(dir, 0o777); err != nil {
					return err
				}
			}
		default:
			if _, err := writeAtomic(dir, v.Files); err != nil {
				return fmt.Errorf("volume %s: %w", v.Name, err)
			}
		}
	}
	return nil
}

func renderFiles(s *Spec, n Names) (hosts, resolv []byte, err error) {
	read := func(p, def string) ([]byte, error) {
		if p == "" {
			p = def
		}
		data, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return data, err
	}
	if s.HostNetwork {
		nodeHosts, err := read(s.HostHosts, "/etc/hosts")
		if err != nil {
			return nil, nil, err
		}
		hosts = RenderHostNetworkHosts(nodeHosts, s.HostAliases)
	} else {
		hosts = RenderHosts(n, s.Addrs, s.HostAliases)
	}
	hostResolv, err := read(s.HostResolvConf, "/etc/resolv.conf")
	if err != nil {
		return nil, nil, err
	}
	host, err := ParseResolvConf(hostResolv)
	if err != nil {
		return nil, nil, fmt.Errorf("the host's resolver configuration: %w", err)
	}
	rc, err := PodResolvConf(DNSInput{
		Policy: s.DNSPolicy, Config: s.DNSConfig, HostNetwork: s.HostNetwork, Namespace: s.Namespace,
		ClusterDomain: s.ClusterDomain, ClusterDNS: s.ClusterDNS, Host: host,
	})
	if err != nil {
		return nil, nil, err
	}
	return hosts, rc.Render(), nil
}

// binds are a container's bind mounts, parents before children.
func (s *Spec) binds(state, scratch string, c Container) []bindPlan {
	vols := map[string]Volume{}
	for _, v := range s.Volumes {
		vols[v.Name] = v
	}
	var out []bindPlan
	for _, vm := range c.Mounts {
		v := vols[vm.Name]
		b := bindPlan{subPath: vm.SubPath, target: vm.MountPath, readOnly: vm.ReadOnly, createSub: !v.content()}
		switch {
		case v.HostPath != "":
			b.source = v.HostPath
		case v.EmptyDir != nil && v.EmptyDir.Medium == corev1.StorageMediumMemory:
			b.source = filepath.Join(scratch, scratchVol, v.Name)
		default:
			b.source = filepath.Join(state, "volumes", v.Name)
		}
		out = append(out, b)
	}
	for _, f := range c.ImageFiles {
		out = append(out, bindPlan{source: f.Source, target: f.Path, readOnly: true})
	}
	slices.SortStableFunc(out, func(a, b bindPlan) int { return depth(a.target) - depth(b.target) })
	return out
}

func depth(p string) int { return strings.Count(path.Clean("/"+p), "/") }

func (s *Spec) validate() error {
	if s.UID == "" || len(s.UID) > 128 || strings.ContainsAny(s.UID, "/\x00") || s.UID == "." || s.UID == ".." {
		return fmt.Errorf("metadata.uid %q cannot name a directory", s.UID)
	}
	if len(s.Containers) == 0 {
		return fmt.Errorf("spec.containers: a pod needs at least one")
	}
	if err := validAliases(s.HostAliases); err != nil {
		return err
	}
	vols := map[string]Volume{}
	for i, v := range s.Volumes {
		if msgs := validation.IsDNS1123Label(v.Name); len(msgs) > 0 {
			return fmt.Errorf("spec.volumes[%d].name %q: %s", i, v.Name, strings.Join(msgs, "; "))
		}
		if _, dup := vols[v.Name]; dup {
			return fmt.Errorf("spec.volumes[%d].name: %q is used twice", i, v.Name)
		}
		if v.EmptyDir != nil && v.HostPath != "" {
			return fmt.Errorf("spec.volumes[%d]: both emptyDir and hostPath", i)
		}
		if v.HostPath != "" && !path.IsAbs(v.HostPath) {
			return fmt.Errorf("spec.volumes[%d].hostPath.path: %q is not absolute", i, v.HostPath)
		}
		for p := range v.Files {
			if err := validFilePath(p); err != nil {
				return fmt.Errorf("spec.volumes[%d] (%s): %w", i, v.Name, err)
			}
		}
		vols[v.Name] = v
	}
	seen := map[string]bool{}
	for i, c := range s.Containers {
		if msgs := validation.IsDNS1123Label(c.Name); len(msgs) > 0 {
			return fmt.Errorf("spec.containers[%d].name %q: %s", i, c.Name, strings.Join(msgs, "; "))
		}
		if seen[c.Name] {
			return fmt.Errorf("spec.containers[%d].name: %q is used twice", i, c.Name)
		}
		seen[c.Name] = true
		for j, vm := range c.Mounts {
			field := fmt.Sprintf("spec.containers[%d].volumeMounts[%d]", i, j)
			if _, ok := vols[vm.Name]; !ok {
				return fmt.Errorf("%s.name: no volume %q in the pod", field, vm.Name)
			}
			if !path.IsAbs(vm.MountPath) || path.Clean(vm.MountPath) == "/" {
				return fmt.Errorf("%s.mountPath: %q must be an absolute path other than /", field, vm.MountPath)
			}
			if vm.SubPathExpr != "" {
				return fmt.Errorf("%s.subPathExpr: expand it into subPath first", field)
			}
			if vm.SubPath != "" {
				if err := validFilePath(vm.SubPath); err != nil {
					return fmt.Errorf("%s.subPath: %w", field, err)
				}
			}
		}
		for j, f := range c.ImageFiles {
			if !path.IsAbs(f.Path) || path.Clean(f.Path) == "/" || !path.IsAbs(f.Source) {
				return fmt.Errorf("container %s: image file %d: paths must be absolute, got %q from %q", c.Name, j, f.Path, f.Source)
			}
		}
	}
	return nil
}

// Remove removes the world of uid under stateDir: it unpins its namespaces
// (which go when their last process does) and deletes its state, volumes
// included. Absent is fine; it may be called for a world half-made.
func Remove(stateDir, uid string) error {
	if uid == "" || strings.ContainsAny(uid, "/\x00") || uid == "." || uid == ".." {
		return fmt.Errorf("removing a pod's world: bad UID %q", uid)
	}
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return err
	}
	defer lockUID(uid)()
	return remove(stateDir, uid)
}

func remove(stateDir, uid string) error {
	pins := podPins(stateDir, uid)
	des, err := os.ReadDir(pins)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var errs []error
	for _, de := range des {
		errs = append(errs, unpin(filepath.Join(pins, de.Name())))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing pod %s's namespaces: %w", uid, err)
	}
	if err := os.Remove(pins); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.RemoveAll(podState(stateDir, uid)); err != nil {
		return fmt.Errorf("removing pod %s's state: %w", uid, err)
	}
	return nil
}

// List returns the UIDs of the worlds under stateDir, whole or not.
func List(stateDir string) ([]string, error) {
	var uids []string
	for _, dir := range []string{pinDir(stateDir), filepath.Join(base(stateDir), podsName)} {
		des, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		for _, de := range des {
			if de.IsDir() {
				uids = append(uids, de.Name())
			}
		}
	}
	slices.Sort(uids)
	return slices.Compact(uids), nil
}

// RemoveAll removes every world under stateDir and the pin directory's
// mount: what `duet down` does after a crash.
func RemoveAll(stateDir string) error {
	uids, err := List(stateDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, uid := range uids {
		errs = append(errs, Remove(stateDir, uid))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	abs, err := filepath.Abs(pinDir(stateDir))
	if err != nil {
		return err
	}
	pinDirs.Lock()
	defer pinDirs.Unlock()
	delete(pinDirs.ready, abs)
	if err := netns.Unmount(abs); err != nil {
		return err
	}
	if err := os.RemoveAll(base(stateDir)); err != nil {
		return fmt.Errorf("removing %s: %w", base(stateDir), err)
	}
	return nil
}
