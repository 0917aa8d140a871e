package images

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The image table file (`--images FILE`) is YAML:
//
//	images:
//	- image: example.com/tools/netexec   # a repository (any tag) or a reference with a tag or digest
//	  entrypoint: [/netexec]             # the image's ENTRYPOINT
//	  cmd: [--http-port=8080]            # its CMD
//	  workingDir: /                      # its WORKDIR
//	  env: {PATH: /usr/bin:/bin}         # its ENV
//	  files: {/netexec: ./bin/netexec}   # in-image path: host file (relative to FILE's directory)
//
// Every field but image may be left out. An entry replaces a built-in
// entry of the same key and adds to the others.

// entryFields are an entry's fields, in the order the format lists them.
var entryFields = []string{"image", "entrypoint", "cmd", "workingDir", "env", "files"}

// ParseError is a mistake in an image table file.
type ParseError struct {
	File  string // "" when parsing bytes
	Line  int    // 0 when the mistake has no line
	Field string // e.g. images[2].files
	Msg   string
}

func (e *ParseError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(":")
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "%d:", e.Line)
	}
	if b.Len() > 0 {
		b.WriteString(" ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads an image table file and returns the built-in table (for
// the duet executable exe) with the file's entries over it.
func Load(file, exe string) (*Table, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading the image table: %w", err)
	}
	dir, err := filepath.Abs(filepath.Dir(file))
	if err != nil {
		return nil, err
	}
	t, err := Parse(data, dir)
	if err != nil {
		var pe *ParseError
		if errors.As(err, &pe) {
			pe.File = file
		}
		return nil, err
	}
	all := Builtin(exe)
	all.Merge(t)
	return all, nil
}

// Parse reads an image table file's contents strictly: unknown fields,
// duplicate keys, values of the wrong kind and invalid values are errors
// (a *ParseError naming the line and field). baseDir, absolute, resolves
// relative host file names.
func Parse(data []byte, baseDir string) (*Table, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return New(), nil
		}
		return nil, &ParseError{Msg: err.Error()}
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, &ParseError{Line: more.Line, Msg: "more than one YAML document"}
	}
	p := parser{baseDir: baseDir, table: New(), lines: map[string]int{}}
	if err := p.document(&doc); err != nil {
		return nil, err
	}
	return p.table, nil
}

type parser struct {
	baseDir string
	table   *Table
	lines   map[string]int // key → line of its entry, for duplicates
}

func fail(n *yaml.Node, field, format string, args ...any) error {
	return &ParseError{Line: n.Line, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// deref follows aliases (YAML anchors) to the node they name.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "null"
		}
		return "a " + strings.TrimPrefix(n.Tag, "!!")
	}
	return "an alias"
}

// mapping walks a mapping's keys, rejecting duplicates and keys outside
// known (when known is non-nil).
func mapping(n *yaml.Node, field string, known []string, each func(key string, kn, v *yaml.Node) error) error {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		return fail(n, field, "want a mapping, got %s", kindName(n))
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, v := deref(n.Content[i]), n.Content[i+1]
		if kn.Kind != yaml.ScalarNode || kn.Tag == "!!null" {
			return fail(kn, field, "want a string key, got %s", kindName(kn))
		}
		key := kn.Value
		if line, dup := seen[key]; dup {
			return fail(kn, join(field, key), "given twice (first on line %d)", line)
		}
		seen[key] = kn.Line
		if known != nil && !slices.Contains(known, key) {
			return fail(kn, join(field, key), "unknown field (known: %s)", strings.Join(known, ", "))
		}
		if err := each(key, kn, v); err != nil {
			return err
		}
	}
	return nil
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

// scalar is a string value; numbers and booleans are taken as written
// (cmd: [--port, 8080]), null is not a string.
func scalar(n *yaml.Node, field string) (string, error) {
	n = deref(n)
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return "", fail(n, field, "want a string, got %s", kindName(n))
	}
	return n.Value, nil
}

func stringList(n *yaml.Node, field string) ([]string, error) {
	n = deref(n)
	if n.Kind != yaml.SequenceNode {
		return nil, fail(n, field, "want a list of strings, got %s", kindName(n))
	}
	out := make([]string, 0, len(n.Content))
	for i, c := range n.Content {
		s, err := scalar(c, fmt.Sprintf("%s[%d]", field, i))
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func (p *parser) document(doc *yaml.Node) error {
	root := doc
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return nil
		}
		root = doc.Content[0]
	}
	root = deref(root)
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil // an empty file, or comments only
	}
	return mapping(root, "", []string{"images"}, func(_ string, _, v *yaml.Node) error {
		v = deref(v)
		if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
			return nil
		}
		if v.Kind != yaml.SequenceNode {
			return fail(v, "images", "want a list of images, got %s", kindName(v))
		}
		for i, e := range v.Content {
			if err := p.entry(e, fmt.Sprintf("images[%d]", i)); err != nil {
				return err
			}
		}
		return nil
	})
}

func (p *parser) entry(n *yaml.Node, field string) error {
	var img Image
	var key string
	haveImage := false
	err := mapping(n, field, entryFields, func(name string, kn, v *yaml.Node) error {
		f := join(field, name)
		var err error
		switch name {
		case "image":
			var s string
			if s, err = scalar(v, f); err != nil {
				return err
			}
			r, perr := ParseRef(s)
			if perr != nil {
				return fail(deref(v), f, "%v", perr)
			}
			key, haveImage = r.String(), true
		case "entrypoint":
			img.Entrypoint, err = stringList(v, f)
		case "cmd":
			img.Cmd, err = stringList(v, f)
		case "workingDir":
			if img.WorkingDir, err = scalar(v, f); err == nil && !path.IsAbs(img.WorkingDir) {
				err = fail(deref(v), f, "%q is not an absolute path", img.WorkingDir)
			}
		case "env":
			img.Env = map[string]string{}
			err = mapping(v, f, nil, func(k string, kn, ev *yaml.Node) error {
				if k == "" || strings.ContainsAny(k, "=\x00") {
					return fail(kn, join(f, k), "an environment variable's name must be non-empty, without '=' or NUL")
				}
				s, err := scalar(ev, join(f, k))
				img.Env[k] = s
				return err
			})
		case "files":
			img.Files = map[string]string{}
			err = mapping(v, f, nil, func(k string, kn, fv *yaml.Node) error {
				if !path.IsAbs(k) || path.Clean(k) != k || k == "/" {
					return fail(kn, join(f, k), "an in-image path must be absolute and clean, and not /")
				}
				s, err := scalar(fv, join(f, k))
				if err != nil {
					return err
				}
				if s == "" {
					return fail(deref(fv), join(f, k), "empty host file name")
				}
				if !filepath.IsAbs(s) {
					s = filepath.Join(p.baseDir, s)
				}
				img.Files[k] = filepath.Clean(s)
				return nil
			})
		}
		return err
	})
	if err != nil {
		return err
	}
	if !haveImage {
		return fail(deref(n), field, "image is required")
	}
	if line, dup := p.lines[key]; dup {
		return fail(deref(n), field, "image %s is given twice (first on line %d)", key, line)
	}
	p.lines[key] = deref(n).Line
	img.Key = key
	p.table.entries[key] = img
	return nil
}
