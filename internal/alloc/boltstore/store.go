// Package boltstore keeps pod-address reservations in one bbolt file per
// network: the durable alloc.PodIPStore under the pod-IP policy
// (alloc.PodIPs), shared by the CNI plugin duet-ipam and the Duet agent.
//
// DataDir/<network>/duet-ipam.db holds, per address, its holder (container
// ID and interface) or the time it was released; an index by holder, so
// DEL and CHECK look up one key; the last address reserved per range set
// (the round-robin cursor); and the cool-down queue. Open locks the
// network's directory (as host-local does) until Close, and every
// transaction is on disk before it returns. On first use the store takes
// over host-local's reservations found in the same directory, so a live
// node can switch without handing out a held address.
//
// The file format is duet-ipam's since its first release: stores written
// by earlier versions open unchanged (testdata holds one).
package boltstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/duet-net/duet/internal/alloc"
)

// DBFile is the store's file inside a network's directory. The directory
// itself is the lock, as with host-local.
const DBFile = "duet-ipam.db"

// DefaultLockTimeout bounds the wait for another invocation on the same
// network. Calls hold the lock for about a millisecond, so reaching it
// means a stuck process.
const DefaultLockTimeout = 20 * time.Second

// Bucket layout. Every change of a transaction is one bbolt transaction,
// so a crash leaves either all of it or none.
//
//	v4, v6    address (4 or 16 bytes, big-endian, so keys sort as numbers)
//	          -> addrRecord: held by an attachment, or cooling since a time
//	owners    "containerID/ifname" -> ownerRecord: its addresses, one per
//	          range set (the index that keeps DEL and CHECK from walking)
//	cursors   range set name -> the address reserved last in it
//	cooling   release time (8 bytes, big-endian ns) + address -> empty:
//	          the cool-down queue, oldest first
//	meta      "schema" -> "1"
var (
	bucketV4      = []byte("v4")
	bucketV6      = []byte("v6")
	bucketOwners  = []byte("owners")
	bucketCursors = []byte("cursors")
	bucketCooling = []byte("cooling")
	bucketMeta    = []byte("meta")
)

// Store is one network's reservations in a bbolt file, opened by one
// process at a time: Open takes an exclusive lock on the network's
// directory (waiting at most the timeout) and Close releases it. It is an
// alloc.PodIPStore; every error it meets itself is an *alloc.StoreError.
// Close must not be called while a transaction is open.
type Store struct {
	db     *bolt.DB
	path   string
	unlock func()
}

var _ alloc.PodIPStore = (*Store)(nil)

// Open opens (creating if needed) the store of network under dataDir.
// Waiting longer than timeout for the lock gives a *LockTimeoutError; every
// other failure is an *alloc.StoreError.
func Open(dataDir, network string, timeout time.Duration) (*Store, error) {
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, &alloc.StoreError{Op: "creating the data directory", Err: err}
	}
	unlock, err := lockDir(dir, timeout)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, DBFile)
	_, statErr := os.Stat(path)
	fresh := errors.Is(statErr, os.ErrNotExist)
	// The directory lock serialises processes; bbolt's own lock only
	// guards against other tools, so a short timeout is enough.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		unlock()
		return nil, &alloc.StoreError{Op: "opening " + path, Err: err}
	}
	s := &Store{db: db, path: path, unlock: unlock}
	ready := false
	err = db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		ready = meta != nil && meta.Get([]byte("schema")) != nil
		return nil
	})
	if err == nil && !ready {
		err = s.initialise(dir)
	}
	if err == nil && fresh {
		err = syncDir(dir) // make the new file's name as durable as its contents
	}
	if err != nil {
		s.Close()
		return nil, &alloc.StoreError{Op: "initialising " + path, Err: err}
	}
	return s, nil
}

// initialise creates the buckets and takes over host-local's reservations.
func (s *Store) initialise(dir string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketV4, bucketV6, bucketOwners, bucketCursors, bucketCooling, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if meta.Get([]byte("schema")) != nil {
			return nil
		}
		if err := importHostLocal(newTxn(tx), dir); err != nil {
			return err
		}
		return meta.Put([]byte("schema"), []byte("1"))
	})
}

// Close closes the file and releases the lock.
func (s *Store) Close() error {
	err := s.db.Close()
	s.unlock()
	if err != nil {
		return &alloc.StoreError{Op: "closing " + s.path, Err: err}
	}
	return nil
}

// Begin starts a bbolt transaction; a writable one is on disk when its
// Commit returns. Failing to begin or commit (a full disk, say) is an
// *alloc.StoreError.
func (s *Store) Begin(writable bool) (alloc.PodIPTxn, error) {
	tx, err := s.db.Begin(writable)
	if err != nil {
		return nil, &alloc.StoreError{Op: "beginning a transaction on " + s.path, Err: err}
	}
	t := newTxn(tx)
	t.path = s.path
	return t, nil
}

// lockDir takes an exclusive flock on dir, waiting at most timeout. The
// kernel queues waiters, so a burst of calls is served as fast as the
// holder finishes, without polling.
func lockDir(dir string, timeout time.Duration) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, &alloc.StoreError{Op: "opening " + dir + " to lock it", Err: err}
	}
	fd := int(f.Fd())
	unlock := func() {
		_ = flock(fd, syscall.LOCK_UN)
		f.Close()
	}
	if flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) == nil {
		return unlock, nil // uncontended: no waiting goroutine needed
	}
	done := make(chan error, 1)
	go func() { done <- flock(fd, syscall.LOCK_EX) }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			f.Close()
			return nil, &alloc.StoreError{Op: "locking " + dir, Err: err}
		}
		return unlock, nil
	case <-timer.C:
		go func() {
			// The lock may still come; give it back, then the descriptor.
			if <-done == nil {
				_ = flock(fd, syscall.LOCK_UN)
			}
			f.Close()
		}()
		return nil, &LockTimeoutError{Dir: dir, After: timeout}
	}
}

// LockTimeoutError says that another invocation held the network's lock
// for longer than the timeout.
type LockTimeoutError struct {
	Dir   string
	After time.Duration
}

func (e *LockTimeoutError) Error() string {
	return fmt.Sprintf("timed out after %s waiting for the lock on %s: another invocation for this network holds it; look for a stuck process with: fuser -v %s", e.After, e.Dir, e.Dir)
}

func flock(fd, how int) error {
	for {
		err := syscall.Flock(fd, how)
		if err != syscall.EINTR {
			return err
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
