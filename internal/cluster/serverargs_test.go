package cluster

import (
	"path/filepath"
	"slices"
	"testing"
)

func TestServerArgsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := []string{"server", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56"}
	if err := writeServerArgs(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := readServerArgs(filepath.Join(dir, ServerArgsFile))
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("read back %q, %v; want %q", got, err, want)
	}
	if _, err := readServerArgs(filepath.Join(dir, "absent")); err == nil {
		t.Error("an absent file gave arguments")
	}
}

func TestParseServerArgs(t *testing.T) {
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{`["server"]`, true},
		{`["server", "--data-dir", "/x"]`, true},
		{`[]`, false},
		{`["agent"]`, false},
		{`{"a": 1}`, false},
		{`["server", 3]`, false},
		{``, false},
	} {
		if _, err := parseServerArgs([]byte(tt.in)); (err == nil) != tt.ok {
			t.Errorf("parseServerArgs(%q) error %v, want ok=%v", tt.in, err, tt.ok)
		}
	}
}

func FuzzParseServerArgs(f *testing.F) {
	f.Add([]byte(`["server", "--cluster-cidr", "10.0.0.0/16"]`))
	f.Add([]byte(`[""]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		args, err := parseServerArgs(data)
		if err == nil && (len(args) == 0 || args[0] != "server") {
			t.Fatalf("accepted %q as %q", data, args)
		}
	})
}
