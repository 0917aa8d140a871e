package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/etcdstore"
	"github.com/duet-net/duet/internal/netaddr"
)

// Labels Kubernetes puts on the IPAddress objects its allocator creates.
const (
	LabelIPFamily  = "ipaddress.kubernetes.io/ip-family"
	LabelManagedBy = "ipaddress.kubernetes.io/managed-by"
	ManagedBy      = "ipallocator.k8s.io"
)

// IPAddressStore keeps cluster IP allocations as networking.k8s.io/v1
// IPAddress objects, named by the IP, created only if absent. etcd refuses
// a second object of one name, so two API server replicas can never hand
// out one IP twice, and the objects say which Service owns each IP.
//
// It writes the objects to etcd itself, under the key the ipaddresses
// registry reads, instead of going through the registry: a dual-stack
// Service creates two of them, and the registry's create (validation,
// storage round trip, decoding the stored object back) was most of what a
// dual-stack Service cost over a headless one. The objects it writes are
// what the registry would store: the storage encoding, with uid and
// creationTimestamp set.
type IPAddressStore struct {
	kv     clientv3.KV
	prefix string // etcd key prefix, ending in "/"
	codec  runtime.Codec
	now    func() time.Time

	mu       sync.Mutex
	queue    []*pendingWrite
	flushing bool // a flush goroutine is draining queue
}

var _ alloc.Store = &IPAddressStore{}

// NewIPAddressStore returns a store writing IPAddress objects below prefix
// (the ipaddresses registry's etcd key prefix) encoded with codec (the
// storage encoding of networking.k8s.io/v1).
func NewIPAddressStore(kv clientv3.KV, prefix string, codec runtime.Codec) (*IPAddressStore, error) {
	if kv == nil || codec == nil {
		return nil, errors.New("IPAddress store: no etcd client or codec")
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &IPAddressStore{kv: kv, prefix: prefix, codec: codec, now: time.Now}, nil
}

// NewIPAddress is the IPAddress object that records ip for owner, as
// Kubernetes' allocator labels it.
func NewIPAddress(ip netip.Addr, owner alloc.Owner) *networkingv1.IPAddress {
	return &networkingv1.IPAddress{
		TypeMeta: metav1.TypeMeta{APIVersion: networkingv1.SchemeGroupVersion.String(), Kind: "IPAddress"},
		ObjectMeta: metav1.ObjectMeta{
			Name: ip.String(),
			Labels: map[string]string{
				LabelIPFamily:  string(netaddr.FamilyOf(ip)),
				LabelManagedBy: ManagedBy,
			},
		},
		Spec: networkingv1.IPAddressSpec{ParentRef: &networkingv1.ParentReference{
			Group: owner.Group, Resource: owner.Resource, Namespace: owner.Namespace, Name: owner.Name,
		}},
	}
}

func (s *IPAddressStore) key(ip netip.Addr) string { return s.prefix + ip.String() }

func (s *IPAddressStore) Create(ctx context.Context, key netip.Prefix) error {
	owner, ok := alloc.OwnerFrom(ctx)
	if !ok {
		return fmt.Errorf("recording %s: no owning object", key.Addr())
	}
	obj := NewIPAddress(key.Addr(), owner)
	obj.UID = types.UID(uuid.NewString())
	obj.CreationTimestamp = metav1.NewTime(s.now())
	var buf bytes.Buffer
	if err := s.codec.Encode(obj, &buf); err != nil {
		return fmt.Errorf("encoding IPAddress %s: %w", key.Addr(), err)
	}
	w := &pendingWrite{ip: key.Addr(), key: s.key(key.Addr()), value: buf.String(), done: make(chan error, 1)}
	s.mu.Lock()
	s.queue = append(s.queue, w)
	if !s.flushing {
		s.flushing = true
		go s.flush()
	}
	s.mu.Unlock()
	// Not abandoned when ctx ends: the record may be written regardless,
	// and the caller must learn whether it was.
	return <-w.done
}

// pendingWrite is one IPAddress waiting to be created.
type pendingWrite struct {
	ip         netip.Addr
	key, value string
	done       chan error
}

// maxBatch stays below etcd's default limit of 128 operations per
// transaction.
const maxBatch = 100

// flush writes queued records until none is left, as many per etcd
// transaction as are waiting (group commit): under load the records of
// many Services, both families of each, share one transaction, one raft
// entry and one WAL sync instead of paying for one each.
func (s *IPAddressStore) flush() {
	for {
		s.mu.Lock()
		var batch []*pendingWrite
		seen := map[string]bool{}
		rest := s.queue[:0]
		for _, w := range s.queue {
			// etcd refuses a transaction naming one key twice; a second
			// write of a key waits for the next one.
			if len(batch) < maxBatch && !seen[w.key] {
				seen[w.key] = true
				batch = append(batch, w)
			} else {
				rest = append(rest, w)
			}
		}
		s.queue = rest
		if len(batch) == 0 {
			s.flushing = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		slow := time.AfterFunc(handOverAfter, s.handOver)
		retry := s.commit(batch)
		mine := slow.Stop()
		s.mu.Lock()
		if len(retry) > 0 {
			s.queue = append(retry, s.queue...)
		}
		if !mine {
			// Another flusher took over while this commit hung: leave
			// the queue to it, or start one if it has finished already.
			if len(s.queue) > 0 && !s.flushing {
				s.flushing = true
				go s.flush()
			}
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// handOverAfter is how long a commit may take before the writes queued
// behind it go in another transaction. A commit hangs when etcd's leader
// dies under it: etcd answers it only after its request timeout (about
// 9 s), while a new leader takes writes after 2 to 4 s; without a hand
// over every Service create would wait for that one answer.
const handOverAfter = 2 * time.Second

// handOver starts another flusher beside one whose commit is slow.
func (s *IPAddressStore) handOver() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) > 0 {
		go s.flush()
	} else {
		s.flushing = false
	}
}

// commit creates every record of batch if none exists. When some exist, it
// answers those with AllocatedError and returns the others to be tried
// again without them.
func (s *IPAddressStore) commit(batch []*pendingWrite) (retry []*pendingWrite) {
	cmps := make([]clientv3.Cmp, len(batch))
	puts := make([]clientv3.Op, len(batch))
	gets := make([]clientv3.Op, len(batch))
	for i, w := range batch {
		cmps[i] = clientv3.Compare(clientv3.CreateRevision(w.key), "=", 0)
		puts[i] = clientv3.OpPut(w.key, w.value)
		gets[i] = clientv3.OpGet(w.key, clientv3.WithCountOnly())
	}
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	resp, err := s.kv.Txn(ctx).If(cmps...).Then(puts...).Else(gets...).Commit()
	switch {
	case err != nil:
		for _, w := range batch {
			w.done <- fmt.Errorf("creating IPAddress %s: %w", w.ip, err)
		}
	case resp.Succeeded:
		for _, w := range batch {
			w.done <- nil
		}
	default:
		for i, w := range batch {
			if r := resp.Responses[i].GetResponseRange(); r != nil && r.Count > 0 {
				w.done <- &alloc.AllocatedError{What: w.ip.String()}
			} else {
				retry = append(retry, w)
			}
		}
	}
	return retry
}

// writeTimeout bounds one transaction, so that a caller waits for an
// answer rather than forever when etcd is unreachable.
const writeTimeout = 30 * time.Second

func (s *IPAddressStore) Delete(ctx context.Context, key netip.Prefix) error {
	if _, err := s.kv.Delete(ctx, s.key(key.Addr())); err != nil {
		return fmt.Errorf("deleting IPAddress %s: %w", key.Addr(), err)
	}
	return nil
}

// List reads only the keys: an IPAddress is named by its IP.
func (s *IPAddressStore) List(ctx context.Context, within netip.Prefix, fn func(netip.Prefix) error) error {
	return s.scan(ctx, 0, true, func(key string, _ []byte) error {
		a, err := netip.ParseAddr(strings.TrimPrefix(key, s.prefix))
		if err != nil || !within.Contains(a) {
			return nil
		}
		return fn(netip.PrefixFrom(a, a.BitLen()))
	})
}

// ListAll returns every IPAddress object as it was at etcd revision rev
// (the current one when rev is 0), for the repair loop, which compares
// them with the Services of a list of that resourceVersion: the API would
// decode, encode and decode them again.
func (s *IPAddressStore) ListAll(ctx context.Context, rev int64) ([]networkingv1.IPAddress, error) {
	var out []networkingv1.IPAddress
	err := s.scan(ctx, rev, false, func(key string, value []byte) error {
		obj, _, err := s.codec.Decode(value, nil, &networkingv1.IPAddress{})
		if err != nil {
			return fmt.Errorf("decoding %s: %w", key, err)
		}
		ip, ok := obj.(*networkingv1.IPAddress)
		if !ok {
			return fmt.Errorf("decoding %s: got %T", key, obj)
		}
		out = append(out, *ip)
		return nil
	})
	return out, err
}

// scan calls fn for every record, read at revision rev (0: the current
// one).
func (s *IPAddressStore) scan(ctx context.Context, rev int64, keysOnly bool, fn func(key string, value []byte) error) error {
	err := etcdstore.ScanAt(ctx, s.kv, rev, s.prefix, clientv3.GetPrefixRangeEnd(s.prefix), keysOnly, func(key, value []byte) error {
		return fn(string(key), value)
	})
	if err != nil {
		return fmt.Errorf("listing IPAddresses at revision %d: %w", rev, err)
	}
	return nil
}
