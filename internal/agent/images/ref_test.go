package images

import (
	"slices"
	"testing"
)

func TestParseRef(t *testing.T) {
	tests := []struct {
		in, want string
		cands    []string
	}{
		{"busybox", "docker.io/library/busybox", []string{"docker.io/library/busybox:latest", "docker.io/library/busybox"}},
		{"busybox:1.36", "docker.io/library/busybox:1.36", []string{"docker.io/library/busybox:1.36", "docker.io/library/busybox"}},
		{"library/busybox", "docker.io/library/busybox", nil},
		{"docker.io/busybox", "docker.io/library/busybox", nil},
		{"index.docker.io/library/busybox:1", "docker.io/library/busybox:1", nil},
		{"someone/tool", "docker.io/someone/tool", nil},
		{"registry.k8s.io/e2e-test-images/agnhost:2.66.1", "registry.k8s.io/e2e-test-images/agnhost:2.66.1", nil},
		{"registry.k8s.io/pause@sha256:abc", "registry.k8s.io/pause@sha256:abc",
			[]string{"registry.k8s.io/pause@sha256:abc", "registry.k8s.io/pause"}},
		{"registry.k8s.io/pause:3.10@sha256:abc", "registry.k8s.io/pause:3.10@sha256:abc",
			[]string{"registry.k8s.io/pause:3.10@sha256:abc", "registry.k8s.io/pause@sha256:abc", "registry.k8s.io/pause:3.10", "registry.k8s.io/pause"}},
		{"localhost/img", "localhost/img", nil},
		{"localhost:5000/img:v1", "localhost:5000/img:v1", nil},
		{"host:5000/a/b", "host:5000/a/b", []string{"host:5000/a/b:latest", "host:5000/a/b"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			r, err := ParseRef(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if r.String() != tt.want {
				t.Errorf("ParseRef(%q) = %s, want %s", tt.in, r, tt.want)
			}
			if tt.cands != nil && !slices.Equal(r.candidates(), tt.cands) {
				t.Errorf("candidates %q, want %q", r.candidates(), tt.cands)
			}
		})
	}
}

func TestParseRefRejects(t *testing.T) {
	for _, in := range []string{"", " busybox", "busy box", "busybox:", "busybox@", "busybox@abc", "/busybox", "a//b", "registry.k8s.io/", ":tag"} {
		if r, err := ParseRef(in); err == nil {
			t.Errorf("ParseRef(%q) = %s, want an error", in, r)
		}
	}
}
