// Package images is Duet's image table. Duet runs no image runtime: a
// container's process runs from the host's file system, and the table
// says, for an image reference, what the image would have run (its
// entrypoint, default command, working directory and environment) and
// which files it provides (an in-image path and the host file to put
// there, which the pod's mount namespace bind-mounts).
//
// References match most precisely first: the exact reference (an
// untagged one means :latest), then its repository with any tag. Names
// are normalised as Docker does, so "busybox", "busybox:1.36" and
// "docker.io/library/busybox:1.36" are one repository.
package images

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
)

// Image is what an image runs and provides.
type Image struct {
	// Key is the table key that matched: a normalised repository, or a
	// reference with a tag or digest.
	Key        string
	Entrypoint []string
	Cmd        []string
	// WorkingDir is "" when the image sets none.
	WorkingDir string
	// Env holds the image's environment defaults.
	Env map[string]string
	// Files maps an in-image absolute path to the host file that
	// provides it.
	Files map[string]string
	// hint explains a file with no host source (a built-in whose
	// program was not found).
	hint map[string]string
}

// Table maps image references to images.
type Table struct {
	entries map[string]Image
}

// NotFoundError is returned for an image the table does not have.
type NotFoundError struct{ Ref string }

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("image %q is not in duet's image table", e.Ref)
}

// FileMissingError is returned for an image whose file has no host
// source.
type FileMissingError struct {
	Ref, Path, Source string
	Hint              string
}

func (e *FileMissingError) Error() string {
	if e.Source == "" {
		return fmt.Sprintf("image %q: no host file for %s: %s", e.Ref, e.Path, e.Hint)
	}
	return fmt.Sprintf("image %q: host file %s for %s: %s", e.Ref, e.Source, e.Path, e.Hint)
}

// New returns an empty table.
func New() *Table { return &Table{entries: map[string]Image{}} }

// Set adds an image under key (a repository for any tag, or a reference
// with a tag or digest), replacing what the key had.
func (t *Table) Set(key string, img Image) error {
	r, err := ParseRef(key)
	if err != nil {
		return err
	}
	img.Key = r.String()
	t.entries[img.Key] = img
	return nil
}

// Merge adds every entry of o, replacing entries of the same key.
func (t *Table) Merge(o *Table) {
	maps.Copy(t.entries, o.entries)
}

// Keys are the table's keys, sorted.
func (t *Table) Keys() []string {
	return slices.Sorted(maps.Keys(t.entries))
}

// Lookup finds the image of a reference. Errors are *NotFoundError, a
// *FileMissingError when a file the image provides has no host file, or
// a parse error of ref.
func (t *Table) Lookup(ref string) (Image, error) {
	r, err := ParseRef(ref)
	if err != nil {
		return Image{}, err
	}
	for _, k := range r.candidates() {
		img, ok := t.entries[k]
		if !ok {
			continue
		}
		for _, p := range sortedKeys(img.Files) {
			src := img.Files[p]
			if src == "" {
				return Image{}, &FileMissingError{Ref: ref, Path: p, Hint: img.hint[p]}
			}
			if _, err := os.Stat(src); err != nil {
				return Image{}, &FileMissingError{Ref: ref, Path: p, Source: src, Hint: statReason(err)}
			}
		}
		return img.clone(), nil
	}
	return Image{}, &NotFoundError{Ref: ref}
}

func (img Image) clone() Image {
	img.Entrypoint = slices.Clone(img.Entrypoint)
	img.Cmd = slices.Clone(img.Cmd)
	img.Env = maps.Clone(img.Env)
	img.Files = maps.Clone(img.Files)
	img.hint = nil
	return img
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// DefaultPath is the PATH of an image that sets none, as Docker and
// containerd give it.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Upstream's images the built-in table knows.
const (
	Agnhost = "registry.k8s.io/e2e-test-images/agnhost"
	Pause   = "registry.k8s.io/pause"
	CoreDNS = "registry.k8s.io/coredns/coredns"
)

// shellImages have no entrypoint and run sh by default; Duet runs the
// host's sh and tools for them.
var shellImages = []string{
	"busybox", "alpine", "debian", "ubuntu", "fedora", "centos", "bash",
	"registry.k8s.io/e2e-test-images/busybox",
	"gcr.io/google-containers/busybox", "k8s.gcr.io/busybox", "registry.k8s.io/busybox",
	// Upstream's DNS test images: shells with dig and getent, which the
	// host has once dnsutils is installed.
	"registry.k8s.io/e2e-test-images/jessie-dnsutils", "registry.k8s.io/e2e-test-images/glibc-dns-testing",
	"gcr.io/kubernetes-e2e-test-images/dnsutils",
}

// Builtin is the table Duet starts with. exe is the running duet
// executable: pause images run it (`duet pause`); upstream's agnhost
// image runs the agnhost binary found beside it (bin/agnhost, which
// `make agnhost` builds) or on PATH, and CoreDNS's image the coredns
// binary found the same way (bin/coredns, from `make coredns`).
func Builtin(exe string) *Table {
	return builtin(exe, exec.LookPath)
}

func builtin(exe string, lookPath func(string) (string, error)) *Table {
	t := New()
	agnhost := Image{Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}, Env: map[string]string{"PATH": DefaultPath}}
	agnhost.provide("/agnhost", hostProgram(exe, "agnhost", lookPath),
		fmt.Sprintf("no agnhost binary beside %s or on PATH; build it with `make agnhost` (it writes bin/agnhost) or map the image to a binary with --images", exe))
	coredns := hostProgram(exe, "coredns", lookPath)
	// The agnhost image also carries CoreDNS, which upstream's DNS tests
	// run as its /coredns; without a coredns binary the image still runs
	// agnhost, and only such a command fails to start.
	if coredns != "" {
		agnhost.Files["/coredns"] = coredns
	}
	// The built-in names are valid; TestBuiltinKeys checks each.
	_ = t.Set(Agnhost, agnhost)
	// CoreDNS's image runs /coredns with the arguments it is given
	// (-conf <Corefile>), from /.
	corednsImage := Image{Entrypoint: []string{"/coredns"}, WorkingDir: "/", Env: map[string]string{"PATH": DefaultPath}}
	corednsImage.provide("/coredns", coredns,
		fmt.Sprintf("no coredns binary beside %s or on PATH; build it with `make coredns` (it writes bin/coredns) or map the image to a binary with --images", exe))
	_ = t.Set(CoreDNS, corednsImage)
	_ = t.Set("coredns/coredns", corednsImage)
	// The pause image's /pause waits for a signal; so does `duet pause`.
	pause := Image{Entrypoint: []string{exe, "pause"}, Env: map[string]string{"PATH": DefaultPath}}
	_ = t.Set(Pause, pause)
	_ = t.Set("k8s.gcr.io/pause", pause)
	for _, name := range shellImages {
		_ = t.Set(name, Image{Cmd: []string{"sh"}, Env: map[string]string{"PATH": DefaultPath}})
	}
	return t
}

// provide makes the host file src the image's file at path; an empty src
// (a program not found) leaves the file missing, and Lookup fails with
// hint.
func (img *Image) provide(path, src, hint string) {
	if img.Files == nil {
		img.Files = map[string]string{}
	}
	img.Files[path] = src
	if src == "" {
		if img.hint == nil {
			img.hint = map[string]string{}
		}
		img.hint[path] = hint
	}
}

// hostProgram is the absolute path of the executable name beside exe or,
// failing that, on PATH; "" when there is none.
func hostProgram(exe, name string, lookPath func(string) (string, error)) string {
	if p := filepath.Join(filepath.Dir(exe), name); isExecutable(p) {
		return p
	}
	if p, err := lookPath(name); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
	}
	return ""
}

// statReason is why a host file is unusable, without the path the
// error message already names.
func statReason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
