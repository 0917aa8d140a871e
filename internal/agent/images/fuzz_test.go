package images

import (
	"reflect"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzParse checks that Parse never panics, and that what it accepts
// survives a round trip: written back as YAML, it parses to the same table.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"",
		"images:\n- image: busybox\n  cmd: [sh]\n",
		"images:\n- image: example.com/a:1@sha256:00\n  entrypoint: [/a, -x]\n  workingDir: /w\n  env: {A: b, C: ''}\n  files: {/a: rel/a, /b: /abs/b}\n",
		"images:\n- image: &x y\n  cmd: [*x, 8080, true, 1.5]\n",
		"images:\n- image: x\n  unknown: 1\n",
		"images: [{image: 'a b'}]",
		"images:\n- image: x\n  env: {'<<': v}\n",
		"a: &a [*a]",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		table, err := Parse(data, "/base")
		if err != nil {
			return
		}
		type entry struct {
			Image      string            `yaml:"image"`
			Entrypoint []string          `yaml:"entrypoint,omitempty"`
			Cmd        []string          `yaml:"cmd,omitempty"`
			WorkingDir string            `yaml:"workingDir,omitempty"`
			Env        map[string]string `yaml:"env,omitempty"`
			Files      map[string]string `yaml:"files,omitempty"`
		}
		var file struct {
			Images []entry `yaml:"images"`
		}
		for _, k := range table.Keys() {
			img := table.entries[k]
			file.Images = append(file.Images, entry{k, img.Entrypoint, img.Cmd, img.WorkingDir, img.Env, img.Files})
		}
		out, err := yaml.Marshal(file)
		if err != nil {
			t.Fatalf("marshalling %v: %v", table.entries, err)
		}
		again, err := Parse(out, "/elsewhere")
		if err != nil {
			t.Fatalf("the table of %q written back as\n%s\ndoes not parse: %v", data, out, err)
		}
		norm := func(m map[string]Image) map[string]Image {
			n := map[string]Image{}
			for k, img := range m {
				// Empty lists and maps are left out when written back.
				if len(img.Entrypoint) == 0 {
					img.Entrypoint = nil
				}
				if len(img.Cmd) == 0 {
					img.Cmd = nil
				}
				if len(img.Env) == 0 {
					img.Env = nil
				}
				if len(img.Files) == 0 {
					img.Files = nil
				}
				n[k] = img
			}
			return n
		}
		if !reflect.DeepEqual(norm(table.entries), norm(again.entries)) {
			t.Fatalf("round trip of %q changed the table:\n%#v\n%#v", data, table.entries, again.entries)
		}
	})
}
