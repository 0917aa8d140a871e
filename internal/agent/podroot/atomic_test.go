package podroot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// The kubelet's layout: one generation directory named for its time,
// ..data linking to it, and each top-level name a link through ..data.
func TestWriteAtomicLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	if _, err := writeAtomic(dir, map[string]File{"key": {Data: []byte("v")}, "sub/x": {Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	gen, err := os.Readlink(filepath.Join(dir, dataLink))
	if err != nil {
		t.Fatalf("..data: %v", err)
	}
	if !regexp.MustCompile(`^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\d+$`).MatchString(gen) {
		t.Errorf("..data links to %q, want ..YYYY_MM_DD_hh_mm_ss.N", gen)
	}
	if fi, err := os.Lstat(filepath.Join(dir, gen)); err != nil || !fi.IsDir() {
		t.Errorf("the generation %s is not a directory: %v", gen, err)
	}
	for name, want := range map[string]string{"key": "..data/key", "sub": "..data/sub"} {
		if got, err := os.Readlink(filepath.Join(dir, name)); err != nil || got != want {
			t.Errorf("%s links to %q (%v), want %q", name, got, err, want)
		}
	}
	if fi, err := os.Lstat(filepath.Join(dir, gen, "sub", "x")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("sub/x is not a file in the generation: %v", err)
	}
}

// generation is the files of update n: each names n and its own path,
// large enough that a reader of a file written in place would catch it
// half-written.
func generation(n int) map[string]File {
	out := map[string]File{}
	for _, p := range []string{"a", "b", "dir/c"} {
		out[p] = File{Data: []byte(fmt.Sprintf("%06d %s %s", n, p, strings.Repeat("x", 16<<10)))}
	}
	return out
}

// parseFile returns the generation a file's content is from, checking it
// is whole and is the file at p.
func parseFile(p string, data []byte) (int, error) {
	var n int
	var name string
	if _, err := fmt.Sscanf(string(data), "%06d %s", &n, &name); err != nil || name != p || len(data) != 8+len(p)+(16<<10) {
		return 0, fmt.Errorf("%s holds %d bytes starting %.20q: not a whole file of any generation", p, len(data), data)
	}
	return n, nil
}

// Readers racing many updates never see a mix: one that reads a volume's
// files through the generation ..data points to sees them all from that
// generation (or finds it gone), and one that reads a file again and again
// through its link sees it whole, and never older than before.
func TestWriteAtomicConcurrentReaders(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	if _, err := writeAtomic(dir, generation(0)); err != nil {
		t.Fatal(err)
	}
	const updates = 100
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	var sets, files, goneSets, goneFiles int
	wg.Add(2)
	go func() { // the whole set, through one resolution of ..data
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			gen, err := os.Readlink(filepath.Join(dir, dataLink))
			if err != nil {
				errs <- fmt.Errorf("..data: %w", err)
				return
			}
			seen := map[int]bool{}
			whole := true
			for _, p := range []string{"a", "b", "dir/c"} {
				data, err := os.ReadFile(filepath.Join(dir, gen, p))
				if errors.Is(err, fs.ErrNotExist) {
					whole = false // the generation was replaced and removed
					break
				}
				if err != nil {
					errs <- err
					return
				}
				n, err := parseFile(p, data)
				if err != nil {
					errs <- err
					return
				}
				seen[n] = true
			}
			if !whole {
				goneSets++
				continue
			}
			if len(seen) != 1 {
				errs <- fmt.Errorf("one read of the volume saw generations %v", seen)
				return
			}
			sets++
		}
	}()
	go func() { // one file through its link, again and again
		defer wg.Done()
		last := 0
		for {
			select {
			case <-done:
				return
			default:
			}
			data, err := os.ReadFile(filepath.Join(dir, "dir", "c"))
			if errors.Is(err, fs.ErrNotExist) {
				// The kernel resolved ..data to the generation being
				// removed: the reader tries again, as with any swap.
				goneFiles++
				continue
			}
			if err != nil {
				errs <- err
				return
			}
			n, err := parseFile("dir/c", data)
			if err != nil {
				errs <- err
				return
			}
			if n < last {
				errs <- fmt.Errorf("dir/c went back from generation %d to %d", last, n)
				return
			}
			last = n
			files++
		}
	}()
	for n := 1; n <= updates; n++ {
		if changed, err := writeAtomic(dir, generation(n)); err != nil || !changed {
			t.Fatalf("update %d: changed %v, %v", n, changed, err)
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if sets == 0 || files == 0 {
		t.Errorf("the readers read %d whole sets and %d files: the race was not run", sets, files)
	}
	t.Logf("%d updates raced by %d whole reads of the volume (%d more found their generation gone) and %d of one file (%d)", updates, sets, goneSets, files, goneFiles)
	if got := read(t, dir); got["a"] != string(generation(updates)["a"].Data) {
		t.Errorf("after the updates a holds %.20q", got["a"])
	}
}

// An update after the world's removal does not make its state again.
func TestUpdateRemovedWorld(t *testing.T) {
	base := t.TempDir()
	r := &Root{UID: "u1", base: base, volumes: map[string]bool{"config": true}}
	vol := []Volume{{Name: "config", Files: map[string]File{"k": {Data: []byte("v")}}}}
	if err := r.Update(vol); err == nil {
		t.Error("a world that is not there was updated")
	}
	if _, err := os.Stat(filepath.Join(base, podsName, "u1")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the update made state for a world that is not there: %v", err)
	}
	// A whole world (its record written last) is updated.
	state := filepath.Join(base, podsName, "u1")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, metaName), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Update(append(vol, Volume{Name: "other", Files: map[string]File{"x": {}}})); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(state, "volumes", "config")); got["k"] != "v" {
		t.Errorf("config holds %v after the update", got)
	}
	if _, err := os.Stat(filepath.Join(state, "volumes", "other")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a volume the world does not have was written: %v", err)
	}
}
