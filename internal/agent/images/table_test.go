package images

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func notFound(string) (string, error) { return "", errors.New("not found") }

// fakeDuet makes a directory with a duet executable and, when withAgnhost,
// an agnhost beside it.
func fakeDuet(t *testing.T, withAgnhost bool) (exe, agnhost string) {
	t.Helper()
	dir := t.TempDir()
	exe, agnhost = filepath.Join(dir, "duet"), filepath.Join(dir, "agnhost")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if withAgnhost {
		if err := os.WriteFile(agnhost, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return exe, agnhost
}

func TestBuiltinMatching(t *testing.T) {
	exe, agnhost := fakeDuet(t, true)
	table := builtin(exe, notFound)
	tests := []struct {
		ref        string
		key        string
		entrypoint []string
		cmd        []string
		files      map[string]string
	}{
		{"registry.k8s.io/e2e-test-images/agnhost:2.66.1", Agnhost, []string{"/agnhost"}, []string{"pause"}, map[string]string{"/agnhost": agnhost}},
		{"registry.k8s.io/e2e-test-images/agnhost", Agnhost, []string{"/agnhost"}, []string{"pause"}, map[string]string{"/agnhost": agnhost}},
		{"registry.k8s.io/e2e-test-images/agnhost@sha256:0123", Agnhost, []string{"/agnhost"}, []string{"pause"}, map[string]string{"/agnhost": agnhost}},
		{"registry.k8s.io/pause:3.10.2", Pause, []string{exe, "pause"}, nil, nil},
		{"k8s.gcr.io/pause:3.2", "k8s.gcr.io/pause", []string{exe, "pause"}, nil, nil},
		{"busybox", "docker.io/library/busybox", nil, []string{"sh"}, nil},
		{"docker.io/library/busybox:1.36", "docker.io/library/busybox", nil, []string{"sh"}, nil},
		{"alpine:3.20", "docker.io/library/alpine", nil, []string{"sh"}, nil},
		{"debian:bookworm", "docker.io/library/debian", nil, []string{"sh"}, nil},
		{"ubuntu", "docker.io/library/ubuntu", nil, []string{"sh"}, nil},
		{"registry.k8s.io/e2e-test-images/busybox:1.37.0-2", "registry.k8s.io/e2e-test-images/busybox", nil, []string{"sh"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			img, err := table.Lookup(tt.ref)
			if err != nil {
				t.Fatal(err)
			}
			if img.Key != tt.key || !slices.Equal(img.Entrypoint, tt.entrypoint) || !slices.Equal(img.Cmd, tt.cmd) {
				t.Errorf("Lookup = key %s entrypoint %q cmd %q, want %s %q %q", img.Key, img.Entrypoint, img.Cmd, tt.key, tt.entrypoint, tt.cmd)
			}
			if len(img.Files) != len(tt.files) {
				t.Errorf("files %v, want %v", img.Files, tt.files)
			}
			for k, v := range tt.files {
				if img.Files[k] != v {
					t.Errorf("files %v, want %v", img.Files, tt.files)
				}
			}
			if img.Env["PATH"] != DefaultPath {
				t.Errorf("PATH %q, want the default", img.Env["PATH"])
			}
		})
	}
	for _, ref := range []string{"nginx", "registry.k8s.io/e2e-test-images/nginx:1.27.0-2", "example.com/busybox", "docker.io/someone/busybox"} {
		var nf *NotFoundError
		if _, err := table.Lookup(ref); !errors.As(err, &nf) {
			t.Errorf("Lookup(%q) = %v, want NotFoundError", ref, err)
		}
	}
}

// Every built-in name is a valid key: Builtin ignores Set's error.
func TestBuiltinKeys(t *testing.T) {
	exe, _ := fakeDuet(t, false)
	keys := builtin(exe, notFound).Keys()
	if want := 5 + len(shellImages); len(keys) != want {
		t.Errorf("%d built-in keys %q, want %d", len(keys), keys, want)
	}
}

func TestBuiltinAgnhostLocation(t *testing.T) {
	t.Run("beside duet", func(t *testing.T) {
		exe, agnhost := fakeDuet(t, true)
		look := func(name string) (string, error) {
			if name == "agnhost" {
				return "/elsewhere/agnhost", nil
			}
			return "", errors.New("not found")
		}
		img, err := builtin(exe, look).Lookup(Agnhost + ":2.66.1")
		if err != nil || img.Files["/agnhost"] != agnhost {
			t.Errorf("Lookup = %v, %v; want /agnhost from %s (beside duet wins over PATH)", img.Files, err, agnhost)
		}
	})
	t.Run("on PATH", func(t *testing.T) {
		exe, _ := fakeDuet(t, false)
		_, onPath := fakeDuet(t, true)
		look := func(name string) (string, error) {
			if name == "agnhost" {
				return onPath, nil
			}
			return "", errors.New("not found")
		}
		img, err := builtin(exe, look).Lookup(Agnhost + ":2.66.1")
		if err != nil || img.Files["/agnhost"] != onPath {
			t.Errorf("Lookup = %v, %v; want /agnhost from %s", img.Files, err, onPath)
		}
	})
	t.Run("missing", func(t *testing.T) {
		exe, _ := fakeDuet(t, false)
		_, err := builtin(exe, notFound).Lookup(Agnhost + ":2.66.1")
		var fm *FileMissingError
		if !errors.As(err, &fm) || fm.Path != "/agnhost" || !strings.Contains(err.Error(), "make agnhost") || !strings.Contains(err.Error(), exe) {
			t.Errorf("Lookup = %v, want a FileMissingError for /agnhost naming %s and make agnhost", err, exe)
		}
	})
}

// fakeProgram writes an executable named name into dir.
func fakeProgram(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// CoreDNS's image runs bin/coredns as its /coredns, and so may the
// agnhost image, which carries CoreDNS too.
func TestBuiltinCoreDNS(t *testing.T) {
	t.Run("beside duet", func(t *testing.T) {
		exe, agnhost := fakeDuet(t, true)
		coredns := fakeProgram(t, filepath.Dir(exe), "coredns")
		table := builtin(exe, notFound)
		for _, ref := range []string{CoreDNS + ":v1.13.1", "coredns/coredns:1.15.0", "docker.io/coredns/coredns"} {
			img, err := table.Lookup(ref)
			if err != nil {
				t.Fatalf("Lookup(%q): %v", ref, err)
			}
			if !slices.Equal(img.Entrypoint, []string{"/coredns"}) || img.Cmd != nil || img.WorkingDir != "/" || img.Files["/coredns"] != coredns {
				t.Errorf("Lookup(%q) = %+v, want entrypoint /coredns from %s, no command, in /", ref, img, coredns)
			}
		}
		img, err := table.Lookup(Agnhost + ":2.66.1")
		if err != nil || img.Files["/agnhost"] != agnhost || img.Files["/coredns"] != coredns {
			t.Errorf("agnhost: %v, %v; want /agnhost from %s and /coredns from %s", img.Files, err, agnhost, coredns)
		}
	})
	t.Run("on PATH", func(t *testing.T) {
		exe, _ := fakeDuet(t, false)
		onPath := fakeProgram(t, t.TempDir(), "coredns")
		look := func(name string) (string, error) {
			if name == "coredns" {
				return onPath, nil
			}
			return "", errors.New("not found")
		}
		img, err := builtin(exe, look).Lookup(CoreDNS + ":v1.13.1")
		if err != nil || img.Files["/coredns"] != onPath {
			t.Errorf("Lookup = %v, %v; want /coredns from %s", img.Files, err, onPath)
		}
	})
	t.Run("missing", func(t *testing.T) {
		exe, agnhost := fakeDuet(t, true)
		table := builtin(exe, notFound)
		_, err := table.Lookup(CoreDNS + ":v1.13.1")
		var fm *FileMissingError
		if !errors.As(err, &fm) || fm.Path != "/coredns" || !strings.Contains(err.Error(), "make coredns") {
			t.Errorf("Lookup = %v, want a FileMissingError for /coredns naming make coredns", err)
		}
		// agnhost runs without it.
		img, err := table.Lookup(Agnhost + ":2.66.1")
		if _, has := img.Files["/coredns"]; err != nil || has || img.Files["/agnhost"] != agnhost {
			t.Errorf("agnhost without coredns: %v, %v; want /agnhost alone", img.Files, err)
		}
	})
}

func TestLookupMostPreciseFirst(t *testing.T) {
	table := New()
	for key, cmd := range map[string]string{
		"example.com/app":            "repo",
		"example.com/app:1":          "tag 1",
		"example.com/app:latest":     "latest",
		"example.com/app@sha256:aa":  "digest aa",
		"example.com/app:2@sha256:b": "tag 2 digest b",
	} {
		if err := table.Set(key, Image{Cmd: []string{cmd}}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct{ ref, want string }{
		{"example.com/app", "latest"},
		{"example.com/app:latest", "latest"},
		{"example.com/app:1", "tag 1"},
		{"example.com/app:3", "repo"},
		{"example.com/app@sha256:aa", "digest aa"},
		{"example.com/app:1@sha256:aa", "digest aa"},
		{"example.com/app:1@sha256:cc", "tag 1"},
		{"example.com/app:2@sha256:b", "tag 2 digest b"},
		{"example.com/app:2@sha256:c", "repo"},
	}
	for _, tt := range tests {
		img, err := table.Lookup(tt.ref)
		if err != nil || len(img.Cmd) != 1 || img.Cmd[0] != tt.want {
			t.Errorf("Lookup(%q) = %q, %v; want the %q entry", tt.ref, img.Cmd, err, tt.want)
		}
	}
}

func TestLookupChecksHostFiles(t *testing.T) {
	table := New()
	missing := filepath.Join(t.TempDir(), "gone")
	if err := table.Set("example.com/app", Image{Files: map[string]string{"/app": missing}}); err != nil {
		t.Fatal(err)
	}
	_, err := table.Lookup("example.com/app:1")
	var fm *FileMissingError
	if !errors.As(err, &fm) || fm.Source != missing || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("Lookup = %v, want a FileMissingError for %s", err, missing)
	}
}

// A looked-up image is a copy: changing it leaves the table alone.
func TestLookupReturnsACopy(t *testing.T) {
	exe, _ := fakeDuet(t, true)
	table := builtin(exe, notFound)
	img, _ := table.Lookup("busybox")
	img.Cmd[0], img.Env["PATH"] = "changed", "changed"
	again, _ := table.Lookup("busybox")
	if again.Cmd[0] != "sh" || again.Env["PATH"] != DefaultPath {
		t.Errorf("the table changed through a looked-up image: %+v", again)
	}
}
