package podroot

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The layout of a content volume's directory, as the kubelet's is, so that
// programs that watch configMap volumes (for the ..data link) work here too:
//
//	..2026_01_02_15_04_05.123456/   one generation of the files
//	..data -> ..2026_01_02_15_04_05.123456
//	key -> ..data/key               one link per top-level name
//
// An update writes a new generation and swaps ..data with one rename, so a
// reader sees the old files or the new ones, never a mix.
const (
	dataLink    = "..data"
	dataLinkTmp = "..data_tmp"
)

// writeAtomic makes dir hold exactly files, swapping them in at once. It
// reports whether anything changed. A generation left by a crash is
// removed.
func writeAtomic(dir string, files map[string]File) (changed bool, err error) {
	top := map[string]bool{}
	for p := range files {
		if err := validFilePath(p); err != nil {
			return false, err
		}
		top[strings.Split(p, "/")[0]] = true
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	old, err := os.Readlink(filepath.Join(dir, dataLink))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	if old != "" && sameFiles(filepath.Join(dir, old), files) {
		return false, removeStale(dir, old, top)
	}
	gen, err := os.MkdirTemp(dir, ".."+time.Now().UTC().Format("2006_01_02_15_04_05."))
	if err != nil {
		return false, err
	}
	if err := writeGeneration(gen, files); err != nil {
		_ = os.RemoveAll(gen)
		return false, err
	}
	tmp := filepath.Join(dir, dataLinkTmp)
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		_ = os.RemoveAll(gen)
		return false, err
	}
	if err := os.Rename(tmp, filepath.Join(dir, dataLink)); err != nil {
		_ = os.RemoveAll(gen)
		return false, err
	}
	for name := range top {
		link := filepath.Join(dir, name)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join(dataLink, name) {
			continue
		}
		_ = os.RemoveAll(link)
		if err := os.Symlink(filepath.Join(dataLink, name), link); err != nil {
			return true, err
		}
	}
	return true, removeStale(dir, filepath.Base(gen), top)
}

// writeGeneration writes files under gen with their modes (not masked by
// the umask).
func writeGeneration(gen string, files map[string]File) error {
	if err := os.Chmod(gen, 0o755); err != nil {
		return err
	}
	for p, f := range files {
		full := filepath.Join(gen, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, f.Data, 0o600); err != nil {
			return err
		}
		if err := os.Chmod(full, modeOf(f)); err != nil {
			return err
		}
	}
	return nil
}

func modeOf(f File) os.FileMode {
	if f.Mode == 0 {
		return defaultFileMode
	}
	return f.Mode & os.ModePerm
}

// sameFiles reports whether the generation gen holds exactly files.
func sameFiles(gen string, files map[string]File) bool {
	n := 0
	err := filepath.WalkDir(gen, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(gen, p)
		f, ok := files[filepath.ToSlash(rel)]
		if !ok {
			return fs.ErrNotExist
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if !bytes.Equal(data, f.Data) || info.Mode().Perm() != modeOf(f) {
			return fs.ErrInvalid
		}
		n++
		return nil
	})
	return err == nil && n == len(files)
}

// removeStale removes generations other than keep and links to names no
// longer in top.
func removeStale(dir, keep string, top map[string]bool) error {
	des, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, de := range des {
		name := de.Name()
		switch {
		case name == dataLink || name == keep:
		case strings.HasPrefix(name, ".."):
			if de.IsDir() || name == dataLinkTmp {
				errs = append(errs, os.RemoveAll(filepath.Join(dir, name)))
			}
		case !top[name]:
			if target, err := os.Readlink(filepath.Join(dir, name)); err == nil && strings.HasPrefix(target, dataLink+"/") {
				errs = append(errs, os.Remove(filepath.Join(dir, name)))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing old files of %s: %w", dir, err)
	}
	return nil
}
