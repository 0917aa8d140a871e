package ipam

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/containernetworking/cni/pkg/types"
)

// DBFile is the store's file inside a network's directory. The directory
// itself is the lock, as with host-local.
const DBFile = "duet-ipam.db"

// DefaultLockTimeout bounds the wait for another invocation on the same
// network. Calls hold the lock for about a millisecond, so reaching it
// means a stuck process.
const DefaultLockTimeout = 20 * time.Second

// Owner identifies an attachment as CNI does: container ID and interface.
type Owner struct {
	ContainerID string
	IfName      string
}

func (o Owner) String() string { return o.ContainerID + "/" + o.IfName }

// key is the owner index key. Interface names cannot contain '/', so the
// key is unambiguous.
func (o Owner) key() []byte { return []byte(o.ContainerID + "/" + o.IfName) }

func ownerFromKey(k []byte) Owner {
	i := bytes.LastIndexByte(k, '/')
	return Owner{ContainerID: string(k[:i]), IfName: string(k[i+1:])}
}

// Bucket layout. Every change of an invocation is one bbolt transaction, so
// a crash leaves either all of it or none.
//
//	v4, v6    address (4 or 16 bytes, big-endian, so keys sort as numbers)
//	          -> addrRecord: held by an owner, or cooling since a time
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

type addrRecord struct {
	ContainerID string `json:"id,omitempty"`
	IfName      string `json:"if,omitempty"`
	// ReleasedAt is set (unix ns) while the address cools down; a cooling
	// record has no owner.
	ReleasedAt int64 `json:"released,omitempty"`
}

func (r addrRecord) heldBy(o Owner) bool {
	return r.ReleasedAt == 0 && r.ContainerID == o.ContainerID && r.IfName == o.IfName
}

type ownerRecord struct {
	IPs []netip.Addr `json:"ips"`
}

// Store is one network's reservations in a bbolt file, opened by one
// invocation at a time: Open takes an exclusive lock on the network's
// directory (waiting at most the timeout) and Close releases it.
type Store struct {
	db     *bolt.DB
	unlock func()
}

// Open opens (creating if needed) the store of network under dataDir.
func Open(dataDir, network string, timeout time.Duration) (*Store, error) {
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the data directory: %w", err)
	}
	unlock, err := lockDir(dir, timeout)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, DBFile)
	_, statErr := os.Stat(path)
	fresh := errors.Is(statErr, os.ErrNotExist)
	// The directory lock serialises duet-ipam calls; bbolt's own lock only
	// guards against other tools, so a short timeout is enough.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		unlock()
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	s := &Store{db: db, unlock: unlock}
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
		return nil, fmt.Errorf("initialising %s: %w", path, err)
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
		if err := importHostLocal(tx, dir); err != nil {
			return err
		}
		return meta.Put([]byte("schema"), []byte("1"))
	})
}

// Close closes the file and releases the lock.
func (s *Store) Close() error {
	err := s.db.Close()
	s.unlock()
	return err
}

// lockDir takes an exclusive flock on dir, waiting at most timeout. The
// kernel queues waiters, so a burst of calls is served as fast as the
// holder finishes, without polling.
func lockDir(dir string, timeout time.Duration) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("opening %s to lock it: %w", dir, err)
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
			return nil, fmt.Errorf("locking %s: %w", dir, err)
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

// Reserve gives owner one address from each range set and records them
// before returning, all in one transaction: both addresses or neither. An
// owner that already holds fitting addresses gets the same ones back.
// requested addresses (at most one per set) are taken instead of the next
// free one.
func (s *Store) Reserve(o Owner, sets []RangeSet, requested []netip.Addr, now time.Time, cooldown time.Duration) ([]netip.Addr, error) {
	var got []netip.Addr
	err := s.db.Update(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		if err := t.expire(now, cooldown); err != nil {
			return err
		}
		prev, err := t.owner(o)
		if err != nil {
			return err
		}
		if prev != nil {
			if addrs, ok := t.fits(o, prev, sets, requested); ok {
				got = addrs
				return nil
			}
			// The configuration changed under a live attachment: start over.
			if err := t.release(o, prev, now, cooldown); err != nil {
				return err
			}
		}
		got = make([]netip.Addr, 0, len(sets))
		for i, set := range sets {
			var a netip.Addr
			var err error
			if req, ok := requestedIn(set, requested); ok {
				a, err = t.claimRequested(o, set, req)
			} else {
				a, err = t.claimNext(o, set)
			}
			if err != nil {
				return fmt.Errorf("range set %d: %w", i, err)
			}
			got = append(got, a)
		}
		for _, r := range requested {
			if !slices.Contains(got, r) {
				return fmt.Errorf("requested IP %s was not allocated: another requested IP takes its range set's one address", r)
			}
		}
		return t.putOwner(o, got)
	})
	if err != nil {
		return nil, err
	}
	return got, nil
}

// Release frees owner's addresses; they cool down before reuse. An unknown
// owner is not an error: DEL must be idempotent.
func (s *Store) Release(o Owner, now time.Time, cooldown time.Duration) ([]netip.Addr, error) {
	var addrs []netip.Addr
	err := s.db.Update(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		if err := t.expire(now, cooldown); err != nil {
			return err
		}
		var err error
		if addrs, err = t.owner(o); err != nil || addrs == nil {
			return err
		}
		return t.release(o, addrs, now, cooldown)
	})
	return addrs, err
}

// Lookup returns owner's addresses, or nil if it holds none.
func (s *Store) Lookup(o Owner) ([]netip.Addr, error) {
	var addrs []netip.Addr
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		addrs, err = newTxn(tx).owner(o)
		return err
	})
	return addrs, err
}

// Holder returns who holds a, whether a is cooling, and whether it has a
// record at all.
func (s *Store) Holder(a netip.Addr) (o Owner, cooling, found bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		rec, ok, err := newTxn(tx).record(a)
		if err != nil || !ok {
			return err
		}
		found, cooling = true, rec.ReleasedAt != 0
		o = Owner{rec.ContainerID, rec.IfName}
		return nil
	})
	return o, cooling, found, err
}

// Check verifies that owner holds one address in each range set, recorded
// as its own, and returns them.
func (s *Store) Check(o Owner, sets []RangeSet) ([]netip.Addr, error) {
	var addrs []netip.Addr
	err := s.db.View(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		var err error
		if addrs, err = t.owner(o); err != nil {
			return err
		}
		if addrs == nil {
			return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("no addresses are reserved for container %s interface %s", o.ContainerID, o.IfName), "")
		}
		ordered, ok := arrange(addrs, sets)
		if !ok {
			return fmt.Errorf("container %s interface %s holds %v, which does not match the network's range sets %v one address each", o.ContainerID, o.IfName, addrs, sets)
		}
		addrs = ordered
		for _, a := range addrs {
			rec, ok, err := t.record(a)
			if err != nil {
				return err
			}
			if !ok || !rec.heldBy(o) {
				return fmt.Errorf("the record of %s does not name container %s interface %s", a, o.ContainerID, o.IfName)
			}
		}
		return nil
	})
	return addrs, err
}

// GC releases every attachment not in valid, and any address record whose
// owner has no index entry. It returns the owners it released.
func (s *Store) GC(valid []types.GCAttachment, now time.Time, cooldown time.Duration) ([]Owner, error) {
	keep := make(map[Owner]bool, len(valid))
	for _, v := range valid {
		keep[Owner{v.ContainerID, v.IfName}] = true
	}
	var released []Owner
	err := s.db.Update(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		if err := t.expire(now, cooldown); err != nil {
			return err
		}
		type gone struct {
			o     Owner
			addrs []netip.Addr
		}
		var drop []gone
		err := t.owners.ForEach(func(k, v []byte) error {
			o := ownerFromKey(k)
			if keep[o] {
				return nil
			}
			var rec ownerRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("owner record %s: %w", k, err)
			}
			drop = append(drop, gone{o, rec.IPs})
			return nil
		})
		if err != nil {
			return err
		}
		for _, g := range drop {
			if err := t.release(g.o, g.addrs, now, cooldown); err != nil {
				return err
			}
			released = append(released, g.o)
		}
		return t.dropOrphans()
	})
	return released, err
}

// Available returns nil if every range set can give out an address (a
// cooling one counts: it is handed out when nothing else is free), or an
// error wrapping alloc.ErrFull that names the first exhausted set.
func (s *Store) Available(sets []RangeSet) error {
	return s.db.View(func(tx *bolt.Tx) error {
		t := newTxn(tx)
		for i, set := range sets {
			if !t.hasRoom(set) {
				return fmt.Errorf("range set %d: %w", i, t.fullError(set))
			}
		}
		return nil
	})
}

// Counts returns the number of held and cooling addresses, for tests and
// metrics. It walks every record.
func (s *Store) Counts() (held, cooling int, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketV4, bucketV6} {
			err := tx.Bucket(name).ForEach(func(_, v []byte) error {
				var rec addrRecord
				if err := json.Unmarshal(v, &rec); err != nil {
					return err
				}
				if rec.ReleasedAt != 0 {
					cooling++
				} else {
					held++
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return held, cooling, err
}

func requestedIn(set RangeSet, requested []netip.Addr) (netip.Addr, bool) {
	for _, a := range requested {
		if set.Contains(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func coolKey(at int64, a netip.Addr) []byte {
	k := make([]byte, 8, 8+16)
	binary.BigEndian.PutUint64(k, uint64(at))
	return append(k, a.AsSlice()...)
}
