package apiserver

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// dataDirLockName is the file in --data-dir that a running server holds
// an exclusive flock on, with its PID inside for the error of the next one.
const dataDirLockName = "lock"

// DataDirInUseError reports that another process holds a data directory.
type DataDirInUseError struct {
	Dir string
	// PID is the holder's process ID, 0 if the lock file does not say.
	PID int
}

func (e *DataDirInUseError) Error() string {
	if e.PID == 0 {
		return fmt.Sprintf("data directory %s is in use by another duet server (%s is locked)", e.Dir, filepath.Join(e.Dir, dataDirLockName))
	}
	return fmt.Sprintf("data directory %s is in use by duet server (pid %d)", e.Dir, e.PID)
}

// lockDataDir takes an exclusive flock on dir/lock, without waiting, and
// writes this process's PID into it. The lock lives as long as the
// returned file stays open, or the process: the kernel drops it when the
// process dies however it dies, so a lock file left behind by kill -9 does
// not block a restart (a PID file alone would). A second server on the
// directory gets a DataDirInUseError naming the holder at once, before it
// starts an etcd that would wait forever for the first one's database.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, dataDirLockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the data directory's lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &DataDirInUseError{Dir: dir, PID: lockHolder(f)}
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.WriteAt(pid, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	return f, nil
}

// lockHolder reads the PID the holder wrote, or 0: the holder may have
// taken the lock and not written it yet.
func lockHolder(f *os.File) int {
	data, err := io.ReadAll(io.NewSectionReader(f, 0, 64))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
