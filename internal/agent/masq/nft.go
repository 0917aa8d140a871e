package masq

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

const (
	// maxElemsPerMsg keeps each element list under the 64 KiB a netlink
	// attribute can hold (an IPv6 interval end takes 36 bytes); a big
	// change is several messages of one batch, so still one transaction.
	maxElemsPerMsg = 1024
	// The kernel takes a whole batch in one sendmsg, which must fit the
	// socket's send buffer: size it to the batch, past net.core.wmem_max.
	defaultSockBuf = 128 << 10 // less than any default net.core.wmem_default
	minSockBuf     = 1 << 20
	bytesPerOp     = 256
	bytesPerElm    = 48
	// A hung netlink exchange must not hang the agent.
	netlinkTimeout = 30 * time.Second
)

type nftBackend struct {
	ns   *os.File // nil: the caller's namespace
	name string   // for messages
}

func newNFTBackend(netns string) (*nftBackend, error) {
	if netns == "" {
		return &nftBackend{name: "the current network namespace"}, nil
	}
	path := netns
	if !strings.ContainsRune(netns, '/') {
		path = filepath.Join("/run/netns", netns)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %q: %w", netns, err)
	}
	return &nftBackend{ns: f, name: "network namespace " + netns}, nil
}

func (b *nftBackend) close() error {
	if b.ns == nil {
		return nil
	}
	err := b.ns.Close()
	b.ns = nil
	return err
}

// conn returns a connection for one exchange. A fresh socket per exchange
// means a failed batch cannot leave unread acks that a later exchange
// would mistake for its own.
func (b *nftBackend) conn(sndbuf int) (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		// Errors then quote only the failing message's header, not its
		// 64 KiB of elements; extended acks carry the kernel's reason.
		_ = c.SetOption(netlink.CapAcknowledge, true)
		_ = c.SetOption(netlink.ExtendedAcknowledge, true)
		if err := c.SetDeadline(time.Now().Add(netlinkTimeout)); err != nil {
			return err
		}
		if sndbuf <= defaultSockBuf {
			return nil
		}
		sndbuf := max(sndbuf, minSockBuf)
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndbuf)
		}); err != nil {
			return err
		}
		if serr != nil {
			// Without CAP_NET_ADMIN, get what net.core.wmem_max allows.
			return c.SetWriteBuffer(sndbuf)
		}
		return nil
	})}
	if b.ns != nil {
		opts = append(opts, nftables.WithNetNSFd(int(b.ns.Fd())))
	}
	return nftables.New(opts...)
}

func (f family) nft() nftables.TableFamily {
	if f == ipv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

func (f family) keyType() nftables.SetDatatype {
	if f == ipv6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

func table(f family) *nftables.Table {
	return &nftables.Table{Name: TableName, Family: f.nft()}
}

func chain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name:     ChainName,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &accept,
	}
}

func set(f family, t *nftables.Table, s setIndex) *nftables.Set {
	return &nftables.Set{Table: t, Name: setNames[s], KeyType: f.keyType(), Interval: true}
}

// ruleExprs is the chain, rule by rule:
//
//	fib daddr type local return
//	ip daddr @never-masquerade return
//	ip daddr @non-masquerade return
//	masquerade fully-random
//
// ip-masq-agent's rules, with its per-CIDR rules replaced by set lookups.
// Fully random ports as in ip-masq-agent since v2.10: without them
// connections from different pods racing for the same source port may
// be dropped. The set IDs tie lookups to sets created in the same batch;
// they are zero when rules are read back.
func ruleExprs(f family, setIDs [2]uint32) [][]expr.Any {
	offset, length := uint32(16), uint32(4) // IPv4 header: daddr
	if f == ipv6 {
		offset, length = 24, 16
	}
	lookup := func(s setIndex) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: length},
			&expr.Lookup{SourceRegister: 1, SetName: setNames[s], SetID: setIDs[s]},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}
	}
	return [][]expr.Any{
		{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
			&expr.Verdict{Kind: expr.VerdictReturn},
		},
		lookup(setNever),
		lookup(setNon),
		{&expr.Masq{FullyRandom: true}},
	}
}

// elements turns ranges into interval set elements: a start element and,
// unless the range runs to the family's last address, an end element one
// past it.
func elements(rs []ipRange) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, 2*len(rs))
	for _, r := range rs {
		out = append(out, nftables.SetElement{Key: r.from.AsSlice()})
		if end := r.to.Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

func chunked(c *nftables.Conn, s *nftables.Set, elems []nftables.SetElement, fn func(*nftables.Set, []nftables.SetElement) error) error {
	for len(elems) > 0 {
		n := min(len(elems), maxElemsPerMsg)
		if err := fn(s, elems[:n]); err != nil {
			return err
		}
		elems = elems[n:]
	}
	return nil
}

func (b *nftBackend) commit(ops []op) error {
	size := 0
	for _, o := range ops {
		size += bytesPerOp + bytesPerElm*2*(len(o.ranges)+o.table.size())
	}
	c, err := b.conn(size)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", b.name, err)
	}
	for _, o := range ops {
		t := table(o.family)
		switch o.kind {
		case opRebuild:
			// Adding before deleting makes the delete succeed whether or
			// not the table exists; the batch then recreates it, so no
			// packet ever sees a half-built table.
			c.AddTable(t)
			c.DelTable(t)
			c.AddTable(t)
			var ids [2]uint32
			for s := range setNames {
				st := set(o.family, t, setIndex(s))
				if err := c.AddSet(st, nil); err != nil {
					return fmt.Errorf("adding set %s: %w", st.Name, err)
				}
				ids[s] = st.ID
				if err := chunked(c, st, elements(o.table[s]), c.SetAddElements); err != nil {
					return fmt.Errorf("adding elements to %s: %w", st.Name, err)
				}
			}
			ch := c.AddChain(chain(t))
			for _, exprs := range ruleExprs(o.family, ids) {
				c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
			}
		case opAdd:
			if err := chunked(c, set(o.family, t, o.set), elements(o.ranges), c.SetAddElements); err != nil {
				return fmt.Errorf("adding elements to %s: %w", setNames[o.set], err)
			}
		case opDelete:
			if err := chunked(c, set(o.family, t, o.set), elements(o.ranges), c.SetDeleteElements); err != nil {
				return fmt.Errorf("deleting elements from %s: %w", setNames[o.set], err)
			}
		case opRemove:
			c.AddTable(t)
			c.DelTable(t)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables transaction in %s: %w", b.name, err)
	}
	return nil
}

func (b *nftBackend) observe(f family) (observed, error) {
	c, err := b.conn(0)
	if err != nil {
		return observed{}, fmt.Errorf("netlink in %s: %w", b.name, err)
	}
	tables, err := c.ListTablesOfFamily(f.nft())
	if err != nil {
		return observed{}, fmt.Errorf("listing tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName }) {
		return observed{}, nil
	}
	o := observed{present: true}
	t := table(f)

	chains, err := c.ListChainsOfTableFamily(f.nft())
	if err != nil {
		return o, fmt.Errorf("listing chains: %w", err)
	}
	var ours []*nftables.Chain
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == TableName {
			ours = append(ours, ch)
		}
	}
	if len(ours) != 1 || !sameChain(ours[0], chain(t)) {
		return o, nil
	}
	rules, err := c.GetRules(t, ours[0])
	if err != nil {
		return o, fmt.Errorf("listing rules: %w", err)
	}
	if !sameRules(f, rules) {
		return o, nil
	}

	sets, err := c.GetSets(t)
	if err != nil {
		return o, fmt.Errorf("listing sets: %w", err)
	}
	if len(sets) != len(setNames) {
		return o, nil
	}
	for _, s := range sets {
		i := slices.Index(setNames[:], s.Name)
		want := set(f, t, setIndex(max(i, 0)))
		if i < 0 || !s.Interval || s.IsMap || s.Constant || s.HasTimeout || s.Anonymous || s.Concatenation ||
			s.KeyType.GetNFTMagic() != want.KeyType.GetNFTMagic() || s.KeyType.Bytes != want.KeyType.Bytes {
			return o, nil
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return o, fmt.Errorf("listing elements of %s: %w", s.Name, err)
		}
		rs, ok := rangesOf(elems, f)
		if !ok {
			return o, nil
		}
		o.sets[i] = rs
	}
	o.intact = true
	return o, nil
}

func sameChain(got, want *nftables.Chain) bool {
	return got.Name == want.Name && got.Type == want.Type &&
		got.Hooknum != nil && *got.Hooknum == *want.Hooknum &&
		got.Priority != nil && *got.Priority == *want.Priority &&
		(got.Policy == nil || *got.Policy == *want.Policy)
}

// sameRules compares rules by their wire encoding, which is what the
// kernel acts on.
func sameRules(f family, rules []*nftables.Rule) bool {
	want := ruleExprs(f, [2]uint32{})
	if len(rules) != len(want) {
		return false
	}
	for i, r := range rules {
		if len(r.Exprs) != len(want[i]) {
			return false
		}
		for j, e := range r.Exprs {
			g, gerr := expr.Marshal(byte(f.nft()), e)
			w, werr := expr.Marshal(byte(f.nft()), want[i][j])
			if gerr != nil || werr != nil || !bytes.Equal(g, w) {
				return false
			}
		}
	}
	return true
}

// rangesOf reads interval elements back into ranges. Anything Duet would
// not have written (an end without a start, two starts in a row, a key of
// the wrong length) reports !ok, and the table is rebuilt.
func rangesOf(elems []nftables.SetElement, f family) ([]ipRange, bool) {
	type el struct {
		a   netip.Addr
		end bool
	}
	els := make([]el, 0, len(elems))
	for _, e := range elems {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok || a.Is6() != (f == ipv6) || len(e.KeyEnd) > 0 {
			return nil, false
		}
		els = append(els, el{a, e.IntervalEnd})
	}
	slices.SortFunc(els, func(x, y el) int {
		if c := x.a.Compare(y.a); c != 0 {
			return c
		}
		if x.end == y.end {
			return 0
		}
		if x.end {
			return -1
		}
		return 1
	})
	var out []ipRange
	for i := 0; i < len(els); i++ {
		if els[i].end {
			return nil, false
		}
		r := ipRange{from: els[i].a}
		switch {
		case i+1 == len(els):
			r.to = lastAddr(netip.PrefixFrom(r.from, 0))
		case els[i+1].end && els[i+1].a.Compare(r.from) > 0:
			r.to = els[i+1].a.Prev()
			i++
		default:
			return nil, false
		}
		out = append(out, r)
	}
	return out, true
}
