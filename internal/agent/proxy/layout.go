package proxy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/duet-net/duet/internal/nft"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The layout. A service port is only data: each of its frontends
// (cluster IP . protocol . port, and the same for each external or load
// balancer IP and for each node IP with its node port) is an element of
// the set of its class, and its endpoints are elements of the shared
// endpoints map, keyed by frontend . index. The class of a port is its
// number of endpoints N; the services chain has one rule per class
// present:
//
//	ip daddr . meta l4proto . th dport @random-3 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 map @endpoints
//
// kube-proxy instead has a verdict map to a chain per service. Any rule,
// and any element that jumps or goes to a chain, makes the kernel
// validate every chain the table reaches at the end of the transaction:
// at 10,000 services that costs ~15 ms, in every sync that adds a service
// or changes an endpoint count. Here such syncs change elements of plain
// sets and maps, and the kernel validates nothing; a rule changes only
// when a class appears or goes, and validating the few chains of this
// table is cheap. Ports with ClientIP affinity are the exception: they
// get kube-proxy's chains (see affinity), reached through a verdict map,
// so only their chains are validated.

// TableName is the name of the proxy's table in both families.
const TableName = "duet-proxy"

// MasqueradeMark is the packet mark bit that asks postrouting to
// masquerade a connection (kube-proxy's bit; the proxy clears it once
// used, so it does not leak into routing decisions further on).
const MasqueradeMark = 0x4000

// Chains and sets of the table.
const (
	chainNATPrerouting  = "nat-prerouting"
	chainNATOutput      = "nat-output"
	chainNATPostrouting = "nat-postrouting"
	chainFilterInput    = "filter-input"
	chainFilterForward  = "filter-forward"
	chainFilterOutput   = "filter-output"
	chainServices       = "services"
	chainReject         = "reject-chain"
	chainMasquerading   = "masquerading"

	// Frontends (address . protocol . port) of ports with endpoints:
	// cluster IPs, and the others (external and load balancer IPs, node
	// IP . node port), reached from outside the cluster and so always
	// masqueraded; and frontends of ports without, which are rejected.
	setClusterFrontends  = "cluster-frontends"
	setExternalFrontends = "external-frontends"
	setNoEndpoints       = "no-endpoint-frontends"
	// frontend . index : endpoint address . port
	setEndpoints = "endpoints"
	// Affinity: frontend : goto svc-<port>, frontend . index : goto
	// ep-<port>__<endpoint>.
	setAffinityServices  = "affinity-services"
	setAffinityEndpoints = "affinity-endpoints"

	// Per port with affinity: svc-<port> sends a client to its endpoint's
	// chain, ep-<port>__<endpoint> remembers it in aff-<port>__<endpoint>
	// and translates.
	prefixService  = "svc-"
	prefixEndpoint = "ep-"
	prefixAffinity = "aff-"
)

// classSet holds the frontends of the ports (without affinity) that have
// n endpoints.
func classSet(n int) string { return fmt.Sprintf("random-%d", n) }

// classOf is the number of endpoints of a port that gets a class rule:
// one with endpoints and without affinity.
func classOf(sp *ServicePort) (int, bool) {
	return len(sp.Endpoints), len(sp.Endpoints) > 0 && sp.Affinity == 0
}

func serviceChain(n ServicePortName) string              { return prefixService + n.String() }
func endpointChain(n ServicePortName, e Endpoint) string { return prefixEndpoint + endpointName(n, e) }
func affinitySet(n ServicePortName, e Endpoint) string   { return prefixAffinity + endpointName(n, e) }

// endpointName is <port>__<address>/<port number>, as kube-proxy names
// endpoints, with an IPv6 address's colons as dashes: nft's parser takes
// neither colons nor brackets in a name.
func endpointName(n ServicePortName, e Endpoint) string {
	return n.String() + "__" + strings.ReplaceAll(e.Addr.String(), ":", "-") + "/" + strconv.Itoa(int(e.Port))
}

// Kernel constants x/sys/unix does not name.
const (
	ipsDstNAT = 0x20 // IPS_DST_NAT: ct status dnat
)

// affinityClients bounds the clients an affinity map remembers (nft's
// default for dynamic sets: the kernel adds nothing to a dynamic set of
// size 0). Clients beyond it are balanced without affinity.
const affinityClients = 65535

// Registers: nftables has sixteen 32-bit data registers, NFT_REG32_00 to
// NFT_REG32_15; a value longer than 4 bytes spans consecutive ones, and a
// set key made of several fields is read from consecutive registers, each
// field padded to 4 bytes. reg(n) is NFT_REG32_n. The rules load their
// registers the way nft itself would, so that nft can list them.
func reg(n uint32) uint32 { return unix.NFT_REG32_00 + n }

// layout renders the proxy's objects for one family.
type layout struct {
	fam          Family
	clusterCIDRs []netip.Prefix
	nodeIPs      []netip.Addr
}

// al is the address length of the family, in bytes; ar, in registers.
func (l *layout) al() uint32 { return uint32(l.fam.AddrLen()) }

func (l *layout) ar() uint32 { return l.al() / 4 }

// kw is the family's nft keyword: ip or ip6.
func (l *layout) kw() string { return l.fam.Keyword() }

func (l *layout) addrType() nftables.SetDatatype { return l.fam.AddrType() }

// table is the proxy's table of the family.
func (l *layout) table() nft.Table { return nft.Table{Family: l.fam, Name: TableName} }

// Element encodings: each field as it sits in registers.
func addrKey(a netip.Addr) []byte { return a.AsSlice() }
func protoKey(p Protocol) []byte  { return []byte{byte(p), 0, 0, 0} }
func portKey(p uint16) []byte     { return []byte{byte(p >> 8), byte(p), 0, 0} }

// indexKey is numgen's output, which the kernel writes in host order.
func indexKey(i int) []byte { return binary.NativeEndian.AppendUint32(nil, uint32(i)) }

func cat(parts ...[]byte) string {
	var b strings.Builder
	for _, p := range parts {
		b.Write(p)
	}
	return b.String()
}

func frontendKey(a netip.Addr, p Protocol, port uint16) string {
	return cat(addrKey(a), protoKey(p), portKey(port))
}

func endpointVal(e Endpoint) string { return cat(addrKey(e.Addr), portKey(e.Port)) }

func concat(ts ...nftables.SetDatatype) nftables.SetDatatype {
	return nftables.MustConcatSetType(ts...)
}

func (l *layout) frontendType() nftables.SetDatatype {
	return concat(l.addrType(), nftables.TypeInetProto, nftables.TypeInetService)
}

func (l *layout) frontendSet(name string) nft.Set {
	return nft.Set{Name: name, Flags: nft.SetConcat, KeyType: l.frontendType()}
}

func (l *layout) clientsSet(name string, timeout time.Duration) nft.Set {
	return nft.Set{Name: name, Flags: nft.SetDynamic | nft.SetTimeout, KeyType: l.addrType(), Timeout: timeout, Size: affinityClients}
}

// skeleton is everything that does not belong to one service port: the
// chains, the shared sets, and a set and a rule per class present.
func (l *layout) skeleton(classes []int) *fragment {
	base := func(name string, typ nftables.ChainType, num *nftables.ChainHook, prio int32, rules ...rule) chainObj {
		return chainObj{name: name, hook: &nft.Hook{Type: typ, Num: *num, Priority: nftables.ChainPriority(prio)}, rules: rules}
	}
	portUnreach := rule{text: "reject with icmp type port-unreachable",
		exprs: []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}}} // ICMP_PORT_UNREACH
	if l.fam == IPv6 {
		portUnreach = rule{text: "reject with icmpv6 type port-unreachable",
			exprs: []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 4}}} // ICMPV6_PORT_UNREACH
	}
	noEndpoints := l.rejectNoEndpoints()
	f := &fragment{
		sets: []nft.Set{
			l.frontendSet(setClusterFrontends),
			l.frontendSet(setExternalFrontends),
			l.frontendSet(setNoEndpoints),
			{Name: setEndpoints, Flags: nft.SetMap | nft.SetConcat,
				KeyType:  concat(l.addrType(), nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
				DataType: concat(l.addrType(), nftables.TypeInetService)},
			{Name: setAffinityServices, Flags: nft.SetMap | nft.SetConcat, KeyType: l.frontendType(), DataType: nftables.TypeVerdict},
			{Name: setAffinityEndpoints, Flags: nft.SetMap | nft.SetConcat,
				KeyType:  concat(l.addrType(), nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
				DataType: nftables.TypeVerdict},
		},
		chains: []chainObj{
			// Services without endpoints are rejected at priority
			// dstnat - 10, as kube-proxy does, before any filter decides.
			base(chainFilterInput, nftables.ChainTypeFilter, nftables.ChainHookInput, -110, noEndpoints),
			base(chainFilterForward, nftables.ChainTypeFilter, nftables.ChainHookForward, -110, noEndpoints, l.markReflected()),
			base(chainFilterOutput, nftables.ChainTypeFilter, nftables.ChainHookOutput, -110, noEndpoints),
			base(chainNATPrerouting, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, -100, jump(chainServices)),
			base(chainNATOutput, nftables.ChainTypeNAT, nftables.ChainHookOutput, -100, jump(chainServices)),
			base(chainNATPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, 100, jump(chainMasquerading)),
			{name: chainReject, rules: []rule{{
				text: "meta l4proto tcp reject with tcp reset",
				exprs: []expr.Any{
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg(0)},
					&expr.Cmp{Op: expr.CmpOpEq, Register: reg(0), Data: []byte{unix.IPPROTO_TCP}},
					&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
				},
			}, portUnreach}},
			{name: chainMasquerading, rules: []rule{
				{
					text: fmt.Sprintf("meta mark & 0x%08x == 0 return", MasqueradeMark),
					exprs: []expr.Any{
						&expr.Meta{Key: expr.MetaKeyMARK, Register: reg(0)},
						&expr.Bitwise{SourceRegister: reg(0), DestRegister: reg(0), Len: 4, Mask: u32(MasqueradeMark), Xor: u32(0)},
						&expr.Cmp{Op: expr.CmpOpEq, Register: reg(0), Data: u32(0)},
						&expr.Verdict{Kind: expr.VerdictReturn},
					},
				},
				{
					text: fmt.Sprintf("meta mark set meta mark ^ 0x%08x", MasqueradeMark),
					exprs: []expr.Any{
						&expr.Meta{Key: expr.MetaKeyMARK, Register: reg(0)},
						&expr.Bitwise{SourceRegister: reg(0), DestRegister: reg(0), Len: 4, Mask: u32(0xffffffff), Xor: u32(MasqueradeMark)},
						&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg(0)},
					},
				},
				{text: "masquerade fully-random", exprs: []expr.Any{&expr.Masq{FullyRandom: true}}},
			}},
			{name: chainServices, rules: l.serviceRules(classes)},
		},
	}
	for _, n := range classes {
		f.sets = append(f.sets, l.frontendSet(classSet(n)))
	}
	return f
}

// serviceRules are the services chain: masquerade marks, ports with
// affinity to their chains, then a rule per class, in the order given (a
// frontend is in one class, so the order does not matter, and new classes
// are appended). A dnat (or a goto) ends the chain.
func (l *layout) serviceRules(classes []int) []rule {
	var rules []rule
	if r, ok := l.masqueradeUnlessCluster(); ok {
		rules = append(rules, r)
	}
	rules = append(rules,
		rule{
			text:  fmt.Sprintf("%s @%s meta mark set meta mark | 0x%08x", l.frontendText(), setExternalFrontends, MasqueradeMark),
			exprs: append(l.inFrontends(setExternalFrontends), markOr()...),
			sets:  []string{setExternalFrontends},
		},
		rule{
			text: fmt.Sprintf("%s vmap @%s", l.frontendText(), setAffinityServices),
			exprs: append(l.loadFrontend(),
				&expr.Lookup{SourceRegister: reg(0), SetName: setAffinityServices, DestRegister: unix.NFT_REG_VERDICT, IsDestRegSet: true}),
			sets: []string{setAffinityServices},
		})
	for _, n := range classes {
		rules = append(rules, l.random(n))
	}
	return rules
}

func (l *layout) frontendText() string {
	return l.kw() + " daddr . meta l4proto . th dport"
}

// loadFrontend puts daddr . l4proto . dport in registers 0 onwards.
func (l *layout) loadFrontend() []expr.Any {
	ar := l.ar()
	return []expr.Any{l.daddr(reg(0)), &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg(ar)}, thDport(reg(ar + 1))}
}

func (l *layout) inFrontends(set string) []expr.Any {
	return append(l.loadFrontend(), &expr.Lookup{SourceRegister: reg(0), SetName: set})
}

// rejectNoEndpoints sends new connections to a frontend without
// endpoints to the reject chain (a TCP reset, or port unreachable) rather
// than let them time out.
func (l *layout) rejectNoEndpoints() rule {
	return rule{
		text:  fmt.Sprintf("ct state new %s @%s goto %s", l.frontendText(), setNoEndpoints, chainReject),
		exprs: append(append(ctNew(), l.inFrontends(setNoEndpoints)...), &expr.Verdict{Kind: expr.VerdictGoto, Chain: chainReject}),
		sets:  []string{setNoEndpoints},
	}
}

// random sends a new connection to one of the n endpoints of its
// frontend, at random: numgen gives an index, and frontend . index is
// looked up in the endpoints map. Registers: the frontend in 0.., the
// index after it, the endpoint found back in 0.. (IPv4: 0-3, then 0-1;
// IPv6: 0-6, then 0-4).
func (l *layout) random(n int) rule {
	set := classSet(n)
	exprs := append(l.inFrontends(set), l.loadFrontend()...)
	exprs = append(exprs,
		&expr.Numgen{Register: reg(l.ar() + 2), Modulus: uint32(n), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: reg(0), SetName: setEndpoints, DestRegister: reg(0), IsDestRegSet: true},
		l.dnatFrom(0),
	)
	return rule{
		text:  fmt.Sprintf("%s @%s dnat %s to %s . numgen random mod %d map @%s", l.frontendText(), set, l.kw(), l.frontendText(), n, setEndpoints),
		exprs: exprs,
		sets:  []string{set, setEndpoints},
	}
}

// affinity renders a port with ClientIP affinity the way kube-proxy does:
// per endpoint, a set of the clients sent there within the timeout, and
// a chain that adds (or refreshes) the client and translates; the port's
// chain sends a remembered client to its endpoint's chain, and others to
// a random one's through the affinity-endpoints verdict map. When an
// endpoint goes, its set goes with it: only its clients choose again.
// (Remembering the endpoint in one map per client would need fewer
// objects, but nft 1.0.6 cannot list the rules that use such a map.)
func (l *layout) affinity(sp *ServicePort, fs []frontend, f *fragment) {
	svc := serviceChain(sp.Name)
	var rules []rule
	for i, e := range sp.Endpoints {
		aff, ch := affinitySet(sp.Name, e), endpointChain(sp.Name, e)
		f.sets = append(f.sets, l.clientsSet(aff, sp.Affinity))
		for _, fe := range fs {
			f.elems = append(f.elems, elemObj{setAffinityEndpoints, fe.key + string(indexKey(i)), elemVal{goTo: ch}})
		}
		rules = append(rules, rule{
			text:  fmt.Sprintf("%s saddr @%s goto %s", l.kw(), aff, ch),
			exprs: []expr.Any{l.saddr(reg(0)), &expr.Lookup{SourceRegister: reg(0), SetName: aff}, &expr.Verdict{Kind: expr.VerdictGoto, Chain: ch}},
			sets:  []string{aff},
		})
		f.chains = append(f.chains, chainObj{name: ch, rules: []rule{{
			text: fmt.Sprintf("update @%s { %s saddr } (timeout %s) dnat %s to %s", aff, l.kw(), sp.Affinity, l.kw(), e),
			exprs: []expr.Any{
				l.saddr(reg(0)),
				&expr.Dynset{SrcRegKey: reg(0), SetName: aff, Operation: unix.NFT_DYNSET_OP_UPDATE},
				&expr.Immediate{Register: reg(0), Data: addrKey(e.Addr)},
				&expr.Immediate{Register: reg(l.ar()), Data: portKey(e.Port)[:2]},
				l.dnatFrom(0),
			},
			sets: []string{aff},
		}}})
	}
	rules = append(rules, rule{
		text: fmt.Sprintf("%s . numgen random mod %d vmap @%s", l.frontendText(), len(sp.Endpoints), setAffinityEndpoints),
		exprs: append(l.loadFrontend(),
			&expr.Numgen{Register: reg(l.ar() + 2), Modulus: uint32(len(sp.Endpoints)), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: reg(0), SetName: setAffinityEndpoints, DestRegister: unix.NFT_REG_VERDICT, IsDestRegSet: true},
		),
		sets: []string{setAffinityEndpoints},
	})
	f.chains = append(f.chains, chainObj{name: svc, rules: rules})
	for _, fe := range fs {
		f.elems = append(f.elems, elemObj{setAffinityServices, fe.key, elemVal{goTo: svc}})
	}
}

// dnatFrom translates to the address . port in registers r onwards.
func (l *layout) dnatFrom(r uint32) *expr.NAT {
	return &expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(l.fam.TableFamily()), RegAddrMin: reg(r), RegProtoMin: reg(r + l.ar())}
}

// markReflected marks for masquerading a connection that was DNATed back
// out of the interface it came in by: a pod reaching itself (hairpin), a
// pod reaching another pod of the same bridge (whose reply would go
// straight back over the bridge, unNATed), a client reaching a node that
// sends it to a node next to the client. In each case the reply would not
// come back through this node unless it is addressed to the node. nftables
// cannot compare iif with oif, but a route lookup of the (new)
// destination restricted to the input interface succeeds exactly when the
// packet leaves by it; fib's oif result is only allowed in forward, hence
// a mark here that postrouting acts on.
func (l *layout) markReflected() rule {
	return rule{
		text: fmt.Sprintf("ct state new ct status dnat fib daddr . iif oif != 0 meta mark set meta mark | 0x%08x", MasqueradeMark),
		exprs: append(append(ctNew(),
			&expr.Ct{Key: expr.CtKeySTATUS, Register: reg(0)},
			&expr.Bitwise{SourceRegister: reg(0), DestRegister: reg(0), Len: 4, Mask: u32(ipsDstNAT), Xor: u32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg(0), Data: u32(0)},
			&expr.Fib{Register: reg(0), FlagDADDR: true, FlagIIF: true, ResultOIF: true},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg(0), Data: u32(0)},
		), markOr()...),
	}
}

// masqueradeUnlessCluster marks connections to a cluster IP from outside
// the cluster's pod CIDRs (the node itself, or a router sending service
// traffic in): their replies would otherwise leave an endpoint on another
// node straight for the client. Without cluster CIDRs there is nothing to
// tell pods from the rest, and the rule is left out.
func (l *layout) masqueradeUnlessCluster() (rule, bool) {
	if len(l.clusterCIDRs) == 0 {
		return rule{}, false
	}
	var text strings.Builder
	fmt.Fprintf(&text, "%s @%s ", l.frontendText(), setClusterFrontends)
	exprs := l.inFrontends(setClusterFrontends)
	for _, p := range l.clusterCIDRs {
		fmt.Fprintf(&text, "%s saddr != %s ", l.kw(), p)
		exprs = append(exprs,
			l.saddr(reg(0)),
			&expr.Bitwise{SourceRegister: reg(0), DestRegister: reg(0), Len: l.al(), Mask: netipMask(p), Xor: make([]byte, l.al())},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg(0), Data: p.Masked().Addr().AsSlice()},
		)
	}
	fmt.Fprintf(&text, "meta mark set meta mark | 0x%08x", MasqueradeMark)
	return rule{text: text.String(), exprs: append(exprs, markOr()...), sets: []string{setClusterFrontends}}, true
}

func netipMask(p netip.Prefix) []byte {
	m := make([]byte, p.Addr().BitLen()/8)
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func jump(chain string) rule {
	return rule{text: "jump " + chain, exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}}
}

func ctNew() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: reg(0)},
		&expr.Bitwise{SourceRegister: reg(0), DestRegister: reg(0), Len: 4, Mask: u32(expr.CtStateBitNEW), Xor: u32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg(0), Data: u32(0)},
	}
}

// markOr sets the masquerade bit, keeping the mark's other bits.
func markOr() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg(0)},
		&expr.Bitwise{SourceRegister: reg(0), DestRegister: reg(0), Len: 4, Mask: u32(^uint32(MasqueradeMark)), Xor: u32(MasqueradeMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg(0)},
	}
}

func (l *layout) daddr(r uint32) *expr.Payload {
	off := uint32(16)
	if l.fam == IPv6 {
		off = 24
	}
	return &expr.Payload{DestRegister: r, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: l.al()}
}

func (l *layout) saddr(r uint32) *expr.Payload {
	off := uint32(12)
	if l.fam == IPv6 {
		off = 8
	}
	return &expr.Payload{DestRegister: r, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: l.al()}
}

func thDport(r uint32) *expr.Payload {
	return &expr.Payload{DestRegister: r, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
}

// frontend is one destination of a port.
type frontend struct {
	key     string // address . protocol . port, as in the sets
	cluster bool   // the cluster IP, as opposed to an address reached from outside
}

func (f frontend) String() string {
	b := []byte(f.key)
	a, _ := netip.AddrFromSlice(b[:len(b)-8])
	return fmt.Sprintf("%s %s", netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[len(b)-4:])), Protocol(b[len(b)-8]))
}

// frontends are a port's destinations: its cluster IP, external and load
// balancer IPs, and node IP . node port for each node IP.
func (l *layout) frontends(sp *ServicePort) []frontend {
	fs := []frontend{{frontendKey(sp.ClusterIP, sp.Name.Protocol, sp.Port), true}}
	for _, a := range sp.ExternalIPs {
		fs = append(fs, frontend{frontendKey(a, sp.Name.Protocol, sp.Port), false})
	}
	if sp.NodePort != 0 {
		for _, a := range l.nodeIPs {
			fs = append(fs, frontend{frontendKey(a, sp.Name.Protocol, sp.NodePort), false})
		}
	}
	return fs
}

// servicePort renders one port's elements, for the frontends it wins.
func (l *layout) servicePort(sp *ServicePort, wins func(frontend) bool) *fragment {
	f := &fragment{}
	var fs []frontend
	for _, fe := range l.frontends(sp) {
		if wins(fe) {
			fs = append(fs, fe)
		}
	}
	if len(sp.Endpoints) == 0 {
		for _, fe := range fs {
			f.elems = append(f.elems, elemObj{set: setNoEndpoints, key: fe.key})
		}
		return f
	}
	for _, fe := range fs {
		kind := setExternalFrontends
		if fe.cluster {
			kind = setClusterFrontends
		}
		f.elems = append(f.elems, elemObj{set: kind, key: fe.key})
	}
	if sp.Affinity > 0 {
		l.affinity(sp, fs, f)
		return f
	}
	set := classSet(len(sp.Endpoints))
	eps := make([]string, len(sp.Endpoints))
	for i, e := range sp.Endpoints {
		eps[i] = endpointVal(e)
	}
	for _, fe := range fs {
		f.elems = append(f.elems, elemObj{set: set, key: fe.key})
		for j, ep := range eps {
			f.elems = append(f.elems, elemObj{setEndpoints, fe.key + string(indexKey(j)), elemVal{data: ep}})
		}
	}
	return f
}
