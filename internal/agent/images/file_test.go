package images

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	data := `
# Duet's image table
images:
- image: example.com/tools/netexec:1.0
  entrypoint: [/netexec]
  cmd: [--http-port, 8080, true]
  workingDir: /srv
  env: {MODE: fast, EMPTY: ""}
  files:
    /netexec: bin/netexec
    /etc/netexec.conf: /etc/hosts
- image: busybox          # overrides the built-in entry
  cmd: [sh, -c, "echo hi"]
- image: &anchor example.com/only-image
- image: example.com/ref@sha256:00
  cmd: *anchor
`
	table, err := Parse([]byte(strings.ReplaceAll(data, "cmd: *anchor", "cmd: [*anchor]")), "/base")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Image{
		"example.com/tools/netexec:1.0": {Key: "example.com/tools/netexec:1.0", Entrypoint: []string{"/netexec"}, Cmd: []string{"--http-port", "8080", "true"},
			WorkingDir: "/srv", Env: map[string]string{"MODE": "fast", "EMPTY": ""},
			Files: map[string]string{"/netexec": "/base/bin/netexec", "/etc/netexec.conf": "/etc/hosts"}},
		"docker.io/library/busybox": {Key: "docker.io/library/busybox", Cmd: []string{"sh", "-c", "echo hi"}},
		"example.com/only-image":    {Key: "example.com/only-image"},
		"example.com/ref@sha256:00": {Key: "example.com/ref@sha256:00", Cmd: []string{"example.com/only-image"}},
	}
	if !reflect.DeepEqual(table.entries, want) {
		t.Errorf("Parse =\n%#v\nwant\n%#v", table.entries, want)
	}
}

func TestParseEmpty(t *testing.T) {
	for _, data := range []string{"", "# nothing\n", "images:\n", "images: []\n", "---\n"} {
		table, err := Parse([]byte(data), "/")
		if err != nil || len(table.Keys()) != 0 {
			t.Errorf("Parse(%q) = %v, %v; want an empty table", data, table.Keys(), err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, data string
		want       string // the whole message
	}{
		{"unknown top-level field", "images: []\nimage: x\n", `2: image: unknown field (known: images)`},
		{"unknown entry field", "images:\n- image: x\n  entrypont: [/x]\n", `3: images[0].entrypont: unknown field (known: image, entrypoint, cmd, workingDir, env, files)`},
		{"missing image", "images:\n- cmd: [sh]\n", `2: images[0]: image is required`},
		{"bad reference", "images:\n- image: 'a b'\n", `2: images[0].image: image reference "a b" contains white space`},
		{"duplicate field", "images:\n- image: x\n  image: y\n", `3: images[0].image: given twice (first on line 2)`},
		{"duplicate image", "images:\n- image: busybox\n- image: docker.io/library/busybox\n", `3: images[1]: image docker.io/library/busybox is given twice (first on line 2)`},
		{"entrypoint a string", "images:\n- image: x\n  entrypoint: /x\n", `3: images[0].entrypoint: want a list of strings, got a str`},
		{"null in cmd", "images:\n- image: x\n  cmd: [sh, null]\n", `3: images[0].cmd[1]: want a string, got null`},
		{"list in cmd", "images:\n- image: x\n  cmd: [[sh]]\n", `3: images[0].cmd[0]: want a string, got a list`},
		{"relative workingDir", "images:\n- image: x\n  workingDir: srv\n", `3: images[0].workingDir: "srv" is not an absolute path`},
		{"env a list", "images:\n- image: x\n  env: [A=b]\n", `3: images[0].env: want a mapping, got a list`},
		{"env name with =", "images:\n- image: x\n  env: {'A=B': c}\n", `3: images[0].env.A=B: an environment variable's name must be non-empty, without '=' or NUL`},
		{"relative in-image path", "images:\n- image: x\n  files: {agnhost: /bin/true}\n", `3: images[0].files.agnhost: an in-image path must be absolute and clean, and not /`},
		{"unclean in-image path", "images:\n- image: x\n  files: {/a/../b: /bin/true}\n", `3: images[0].files./a/../b: an in-image path must be absolute and clean, and not /`},
		{"empty host file", "images:\n- image: x\n  files: {/a: ''}\n", `3: images[0].files./a: empty host file name`},
		{"images a mapping", "images: {image: x}\n", `1: images: want a list of images, got a mapping`},
		{"top a list", "- image: x\n", `1: want a mapping, got a list`},
		{"two documents", "images: []\n---\nimages: []\n", `2: more than one YAML document`},
		{"syntax", "images: [\n", `yaml: line 1: did not find expected node content`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.data), "/")
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse = %v, want a *ParseError", err)
			}
			if err.Error() != tt.want {
				t.Errorf("Parse error\n %s\nwant\n %s", err, tt.want)
			}
		})
	}
}

func TestLoadOverridesBuiltins(t *testing.T) {
	exe, _ := fakeDuet(t, false)
	dir := t.TempDir()
	tool := filepath.Join(dir, "tool")
	if err := os.WriteFile(tool, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "images.yaml")
	data := "images:\n- image: registry.k8s.io/e2e-test-images/agnhost\n  entrypoint: [/agnhost]\n  files: {/agnhost: tool}\n- image: example.com/new:1\n  cmd: [run]\n"
	if err := os.WriteFile(file, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	table, err := Load(file, exe)
	if err != nil {
		t.Fatal(err)
	}
	img, err := table.Lookup(Agnhost + ":2.66.1")
	if err != nil || img.Files["/agnhost"] != tool || img.Cmd != nil {
		t.Errorf("agnhost = %+v, %v; want the file's entry (no cmd, /agnhost from %s)", img, err, tool)
	}
	if img, err := table.Lookup("example.com/new:1"); err != nil || img.Cmd[0] != "run" {
		t.Errorf("added entry = %+v, %v", img, err)
	}
	if img, err := table.Lookup("busybox"); err != nil || img.Cmd[0] != "sh" {
		t.Errorf("built-in busybox = %+v, %v; want it kept", img, err)
	}

	if err := os.WriteFile(file, []byte("images:\n- image: x\n  comand: [a]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(file, exe)
	if want := file + ":3: images[0].comand: unknown field"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Load = %v, want an error starting %q", err, want)
	}
	if _, err := Load(filepath.Join(dir, "absent.yaml"), exe); err == nil || !strings.Contains(err.Error(), "absent.yaml") {
		t.Errorf("Load of a missing file = %v, want an error naming it", err)
	}
}
