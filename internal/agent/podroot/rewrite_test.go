package podroot

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/duet-net/duet/internal/testutil/roottest"
)

func TestRewriteInPlace(t *testing.T) {
	long := "search ns1.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00:10:96::a\noptions ndots:5\n"
	short := "search ns1.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
	for _, tc := range []struct{ name, old, now string }{
		{"a line goes", long, short},
		{"a line comes", short, long},
		{"the same", long, long},
		{"to empty", short, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(path, []byte(tc.old), 0o644); err != nil {
				t.Fatal(err)
			}
			past := time.Now().Add(-time.Hour).Truncate(time.Second)
			if err := os.Chtimes(path, past, past); err != nil {
				t.Fatal(err)
			}
			before := inode(t, path)
			if err := rewriteInPlace(path, []byte(tc.now)); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.now {
				t.Errorf("the file holds %q, want %q", got, tc.now)
			}
			if after := inode(t, path); after != before {
				t.Errorf("the file was replaced (inode %d, was %d): a bind mount of it keeps the old one", after, before)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if written := !fi.ModTime().Equal(past); written != (tc.old != tc.now) {
				t.Errorf("written = %v for a change from %q to %q", written, tc.old, tc.now)
			}
		})
	}
	if err := rewriteInPlace(filepath.Join(t.TempDir(), "absent"), []byte("x")); err == nil {
		t.Errorf("rewriteInPlace made a file that was not there")
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// A running pod's containers see its /etc/resolv.conf and /etc/hosts
// lose the lines of a family the cluster dropped, and gain them again
// when it comes back: the files bound into their roots are the ones
// rewritten.
func TestRewriteFilesReachesTheContainers(t *testing.T) {
	roottest.Require(t, "nsenter")
	state := t.TempDir()
	spec := testSpec("uid-rewrite", imageFile(t))
	r, err := Create(context.Background(), state, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = RemoveAll(state) })
	inodeBefore := in(t, r, "a", "stat -c %i /etc/resolv.conf /etc/hosts")

	dual := *spec
	single := *spec
	single.Addrs = spec.Addrs[:1]
	single.ClusterDNS = spec.ClusterDNS[:1]
	for _, step := range []struct {
		name string
		s    *Spec
		has  bool
	}{{"IPv6 dropped", &single, false}, {"IPv6 back", &dual, true}} {
		if err := r.RewriteFiles(step.s); err != nil {
			t.Fatalf("%s: RewriteFiles: %v", step.name, err)
		}
		for _, c := range []string{"a", "b"} {
			resolv := in(t, r, c, "cat /etc/resolv.conf")
			if !strings.Contains(resolv, "nameserver 10.96.0.10\n") || strings.Contains(resolv, "fd00:10:96::a") != step.has || strings.Contains(resolv, "\n\n") {
				t.Errorf("%s: container %s reads /etc/resolv.conf:\n%s", step.name, c, resolv)
			}
			hosts := in(t, r, c, "cat /etc/hosts")
			if !strings.Contains(hosts, "10.244.1.5\t") || strings.Contains(hosts, "fd00:10:244:1::5") != step.has {
				t.Errorf("%s: container %s reads /etc/hosts:\n%s", step.name, c, hosts)
			}
		}
	}
	if got := in(t, r, "a", "stat -c %i /etc/resolv.conf /etc/hosts"); got != inodeBefore {
		t.Errorf("the container's files are others now: inodes %q, were %q", got, inodeBefore)
	}
	other := single
	other.UID = "uid-other"
	if err := r.RewriteFiles(&other); err == nil {
		t.Errorf("RewriteFiles took another pod's spec")
	}
}
