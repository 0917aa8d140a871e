package apiserver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// flock conflicts between two opens of one file even in one process, so
// one test process plays both servers.
func TestLockDataDir(t *testing.T) {
	dir := t.TempDir()
	me := os.Getpid()

	first, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("locking a free data directory: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, dataDirLockName))
	if err != nil || strings.TrimSpace(string(data)) != strconv.Itoa(me) {
		t.Errorf("lock file holds %q (%v), want this process's PID %d", data, err, me)
	}

	_, err = lockDataDir(dir)
	var inUse *DataDirInUseError
	if !errors.As(err, &inUse) || inUse.PID != me {
		t.Fatalf("second lock: %v, want a DataDirInUseError naming pid %d", err, me)
	}
	if want := fmt.Sprintf("data directory %s is in use by duet server (pid %d)", dir, me); err.Error() != want {
		t.Errorf("second lock: %q, want %q", err, want)
	}

	// Released (as the kernel does when the holder dies, kill -9
	// included): the stale PID in the file does not matter.
	first.Close()
	second, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("locking after the holder let go: %v", err)
	}
	defer second.Close()
}

func TestLockDataDirStaleAndUnreadablePID(t *testing.T) {
	for _, tc := range []struct {
		name, content string
	}{
		{"stale PID of a dead server, longer than ours", "999999999\n"},
		{"garbage", "not a pid"},
		{"empty", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, dataDirLockName)
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := lockDataDir(dir)
			if err != nil {
				t.Fatalf("a lock file nobody holds blocked the start: %v", err)
			}
			defer f.Close()
			if data, _ := os.ReadFile(path); strings.TrimSpace(string(data)) != strconv.Itoa(os.Getpid()) {
				t.Errorf("lock file holds %q, want only this process's PID", data)
			}
		})
	}

	// A holder that has not written its PID yet: the error still names
	// the directory.
	dir := t.TempDir()
	path := filepath.Join(dir, dataDirLockName)
	holder, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := holder.Truncate(0); err != nil {
		t.Fatal(err)
	}
	_, err = lockDataDir(dir)
	if want := fmt.Sprintf("data directory %s is in use by another duet server (%s is locked)", dir, path); err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
}
