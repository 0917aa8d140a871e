package images

import (
	"fmt"
	"strings"
)

// Ref is an image reference in Docker's normalised form: a repository
// with its registry ("docker.io/library/busybox"), and a tag, a digest,
// both or neither.
type Ref struct {
	Repo   string
	Tag    string
	Digest string
}

// dockerHub is the registry of references that name none.
const dockerHub = "docker.io"

// ParseRef normalises an image reference as Docker does: a first path
// component that looks like a host (a dot, a port or "localhost") is the
// registry, otherwise the registry is docker.io, and a one-component
// docker.io name is under library/.
func ParseRef(s string) (Ref, error) {
	if s == "" {
		return Ref{}, fmt.Errorf("empty image reference")
	}
	if strings.TrimSpace(s) != s || strings.ContainsAny(s, " \t\r\n") {
		return Ref{}, fmt.Errorf("image reference %q contains white space", s)
	}
	var r Ref
	name := s
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name, r.Digest = name[:i], name[i+1:]
		if r.Digest == "" || !strings.Contains(r.Digest, ":") {
			return Ref{}, fmt.Errorf("image reference %q: digest %q is not ALGORITHM:HEX", s, r.Digest)
		}
	}
	// A colon after the last slash starts the tag; one before it is a
	// registry's port.
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name, r.Tag = name[:i], name[i+1:]
		if r.Tag == "" {
			return Ref{}, fmt.Errorf("image reference %q: empty tag", s)
		}
	}
	if name == "" || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.Contains(name, "//") {
		return Ref{}, fmt.Errorf("image reference %q: bad repository name %q", s, name)
	}
	domain, rest, found := strings.Cut(name, "/")
	if !found || !strings.ContainsAny(domain, ".:") && domain != "localhost" {
		domain, rest = dockerHub, name
	}
	if domain == "index.docker.io" {
		domain = dockerHub
	}
	if domain == dockerHub && !strings.Contains(rest, "/") {
		rest = "library/" + rest
	}
	r.Repo = domain + "/" + rest
	return r, nil
}

// String is the normalised reference.
func (r Ref) String() string {
	s := r.Repo
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest
	}
	return s
}

// candidates are the table keys a reference matches, most precise
// first: itself (an untagged reference means :latest, as for docker
// pull), its digest or its tag alone, then its repository (any tag).
func (r Ref) candidates() []string {
	exact := r
	if exact.Tag == "" && exact.Digest == "" {
		exact.Tag = "latest"
	}
	out := []string{exact.String()}
	if r.Tag != "" && r.Digest != "" {
		out = append(out, Ref{Repo: r.Repo, Digest: r.Digest}.String(), Ref{Repo: r.Repo, Tag: r.Tag}.String())
	}
	return append(out, r.Repo)
}
