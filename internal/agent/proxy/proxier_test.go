package proxy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/duet-net/duet/internal/nft"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

func fakeProxier(t *testing.T, fam Family) (*Proxier, *nft.Fake) {
	t.Helper()
	f := nft.NewFake()
	o := Options{
		NodeIPs:      []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")},
	}
	return newProxier(fam, o, f), f
}

func port(ns, name string, proto Protocol, clusterIP string, p uint16, eps ...string) ServicePort {
	sp := ServicePort{Name: ServicePortName{Namespace: ns, Name: name, Port: "p", Protocol: proto}, ClusterIP: netip.MustParseAddr(clusterIP), Port: p}
	for _, e := range eps {
		sp.Endpoints = append(sp.Endpoints, Endpoint{netip.MustParseAddr(e), 8080})
	}
	return sp
}

func desired(ports ...ServicePort) map[ServicePortName]ServicePort {
	m := map[ServicePortName]ServicePort{}
	for _, p := range ports {
		m[p.Name] = p
	}
	return m
}

func mustSync(t *testing.T, p *Proxier, d map[ServicePortName]ServicePort) int {
	t.Helper()
	n, err := p.Sync(d)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return n
}

// The layout, end to end: what each kind of service port becomes.
func TestSyncLayout(t *testing.T) {
	p, f := fakeProxier(t, IPv4)
	web := port("ns", "web", TCP, "10.96.0.10", 80, "10.244.1.12", "10.244.1.11")
	np := port("ns", "np", UDP, "10.96.0.11", 53, "10.244.2.5")
	np.NodePort = 30053
	np.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.5")}
	sticky := port("ns", "sticky", TCP, "10.96.0.12", 80, "10.244.1.11")
	sticky.Affinity = time.Minute
	empty := port("ns", "empty", TCP, "10.96.0.13", 80)
	empty.NodePort = 30080
	mustSync(t, p, desired(web, np, sticky, empty))

	want := `table ip duet-proxy
  set aff-ns/sticky/tcp/p__10.244.1.11/8080 { type ipv4_addr; flags dynamic,timeout; timeout 1m0s; size 65535 }
  set affinity-endpoints { type ipv4_addr . inet_proto . inet_service . mark : verdict }
    10.96.0.12 . tcp . 80 . 0x00000000 : goto ep-ns/sticky/tcp/p__10.244.1.11/8080
  set affinity-services { type ipv4_addr . inet_proto . inet_service : verdict }
    10.96.0.12 . tcp . 80 : goto svc-ns/sticky/tcp/p
  set cluster-frontends { type ipv4_addr . inet_proto . inet_service }
    10.96.0.10 . tcp . 80
    10.96.0.11 . udp . 53
    10.96.0.12 . tcp . 80
  set endpoints { type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr . inet_service }
    10.96.0.10 . tcp . 80 . 0x00000000 : 10.244.1.11 . 8080
    10.96.0.10 . tcp . 80 . 0x00000001 : 10.244.1.12 . 8080
    10.96.0.11 . udp . 53 . 0x00000000 : 10.244.2.5 . 8080
    192.0.2.1 . udp . 30053 . 0x00000000 : 10.244.2.5 . 8080
    203.0.113.5 . udp . 53 . 0x00000000 : 10.244.2.5 . 8080
  set external-frontends { type ipv4_addr . inet_proto . inet_service }
    192.0.2.1 . udp . 30053
    203.0.113.5 . udp . 53
  set no-endpoint-frontends { type ipv4_addr . inet_proto . inet_service }
    10.96.0.13 . tcp . 80
    192.0.2.1 . tcp . 30080
  set random-1 { type ipv4_addr . inet_proto . inet_service }
    10.96.0.11 . udp . 53
    192.0.2.1 . udp . 30053
    203.0.113.5 . udp . 53
  set random-2 { type ipv4_addr . inet_proto . inet_service }
    10.96.0.10 . tcp . 80
  chain ep-ns/sticky/tcp/p__10.244.1.11/8080
    update @aff-ns/sticky/tcp/p__10.244.1.11/8080 { ip saddr } (timeout 1m0s) dnat ip to 10.244.1.11:8080
  chain filter-forward { type filter hook forward priority -110 }
    ct state new ip daddr . meta l4proto . th dport @no-endpoint-frontends goto reject-chain
    ct state new ct status dnat fib daddr . iif oif != 0 meta mark set meta mark | 0x00004000
  chain filter-input { type filter hook input priority -110 }
    ct state new ip daddr . meta l4proto . th dport @no-endpoint-frontends goto reject-chain
  chain filter-output { type filter hook output priority -110 }
    ct state new ip daddr . meta l4proto . th dport @no-endpoint-frontends goto reject-chain
  chain masquerading
    meta mark & 0x00004000 == 0 return
    meta mark set meta mark ^ 0x00004000
    masquerade fully-random
  chain nat-output { type nat hook output priority -100 }
    jump services
  chain nat-postrouting { type nat hook postrouting priority 100 }
    jump masquerading
  chain nat-prerouting { type nat hook prerouting priority -100 }
    jump services
  chain reject-chain
    meta l4proto tcp reject with tcp reset
    reject with icmp type port-unreachable
  chain services
    ip daddr . meta l4proto . th dport @cluster-frontends ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x00004000
    ip daddr . meta l4proto . th dport @external-frontends meta mark set meta mark | 0x00004000
    ip daddr . meta l4proto . th dport vmap @affinity-services
    ip daddr . meta l4proto . th dport @random-1 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints
    ip daddr . meta l4proto . th dport @random-2 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @endpoints
  chain svc-ns/sticky/tcp/p
    ip saddr @aff-ns/sticky/tcp/p__10.244.1.11/8080 goto ep-ns/sticky/tcp/p__10.244.1.11/8080
    ip daddr . meta l4proto . th dport . numgen random mod 1 vmap @affinity-endpoints
`
	if got := f.Dump(); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
	if n := mustSync(t, p, desired(web, np, sticky, empty)); n != 0 {
		t.Errorf("a second Sync of the same ports changed %d objects", n)
	}
	if f.Lists() != 1 {
		t.Errorf("the table was listed %d times; only the first sync should read it", f.Lists())
	}
}

// lastTx is the last transaction the fake applied, without the table
// named on every line.
func lastTx(t *testing.T, f *nft.Fake) string {
	t.Helper()
	if f.Transactions() == 0 {
		t.Fatal("no transaction applied")
	}
	return strings.NewReplacer(" ip "+TableName+" ", " ", " ip6 "+TableName+" ", " ").Replace(f.LastTransaction())
}

func manyPorts(n int) map[ServicePortName]ServicePort {
	d := map[ServicePortName]ServicePort{}
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		sp := port("ns", fmt.Sprintf("s%d", i), TCP, ip.String(), 80, "10.244.1.11", "10.244.1.12", "10.244.1.13")
		d[sp.Name] = sp
	}
	return d
}

// A sync sends what changed and nothing else, without reading the table;
// once the classes are there (ports with 2 and 3 endpoints), changes are
// elements only: no rule, no validation of the table by the kernel.
func TestIncrementalSyncSendsOnlyTheDifference(t *testing.T) {
	p, f := fakeProxier(t, IPv4)
	d := manyPorts(1000)
	two := port("ns", "two", TCP, "10.96.200.1", 80, "10.244.1.11", "10.244.1.12")
	d[two.Name] = two
	mustSync(t, p, d)
	name := ServicePortName{"ns", "s500", "p", TCP}

	sp := d[name]
	sp.Endpoints = []Endpoint{sp.Endpoints[0], sp.Endpoints[2]}
	d[name] = sp
	mustSync(t, p, d)
	want := `delete element endpoints { 10.96.1.244 . tcp . 80 . 0x00000001 }
delete element endpoints { 10.96.1.244 . tcp . 80 . 0x00000002 }
delete element random-3 { 10.96.1.244 . tcp . 80 }
add element endpoints { 10.96.1.244 . tcp . 80 . 0x00000001 : 10.244.1.13 . 8080 }
add element random-2 { 10.96.1.244 . tcp . 80 }
`
	if got := lastTx(t, f); got != want {
		t.Errorf("removing an endpoint sent:\n%s\nwant:\n%s", got, want)
	}

	sp.NodePort = 30001
	d[name] = sp
	mustSync(t, p, d)
	want = `add element endpoints { 192.0.2.1 . tcp . 30001 . 0x00000000 : 10.244.1.11 . 8080 }
add element endpoints { 192.0.2.1 . tcp . 30001 . 0x00000001 : 10.244.1.13 . 8080 }
add element external-frontends { 192.0.2.1 . tcp . 30001 }
add element random-2 { 192.0.2.1 . tcp . 30001 }
`
	if got := lastTx(t, f); got != want {
		t.Errorf("adding a node port sent:\n%s\nwant:\n%s", got, want)
	}

	sp.Endpoints = nil
	d[name] = sp
	mustSync(t, p, d)
	want = `delete element cluster-frontends { 10.96.1.244 . tcp . 80 }
delete element endpoints { 10.96.1.244 . tcp . 80 . 0x00000000 }
delete element endpoints { 10.96.1.244 . tcp . 80 . 0x00000001 }
delete element endpoints { 192.0.2.1 . tcp . 30001 . 0x00000000 }
delete element endpoints { 192.0.2.1 . tcp . 30001 . 0x00000001 }
delete element external-frontends { 192.0.2.1 . tcp . 30001 }
delete element random-2 { 10.96.1.244 . tcp . 80 }
delete element random-2 { 192.0.2.1 . tcp . 30001 }
add element no-endpoint-frontends { 10.96.1.244 . tcp . 80 }
add element no-endpoint-frontends { 192.0.2.1 . tcp . 30001 }
`
	if got := lastTx(t, f); got != want {
		t.Errorf("losing the last endpoint sent:\n%s\nwant:\n%s", got, want)
	}

	delete(d, name)
	mustSync(t, p, d)
	want = `delete element no-endpoint-frontends { 10.96.1.244 . tcp . 80 }
delete element no-endpoint-frontends { 192.0.2.1 . tcp . 30001 }
`
	if got := lastTx(t, f); got != want {
		t.Errorf("deleting the service sent:\n%s\nwant:\n%s", got, want)
	}

	// A port with a new number of endpoints brings its class's set, and
	// its rule appended to the services chain; the class stays when its
	// last port goes, until the periodic check takes it away.
	four := port("ns", "four", TCP, "10.96.200.4", 80, "10.244.1.11", "10.244.1.12", "10.244.1.13", "10.244.1.14")
	d[four.Name] = four
	mustSync(t, p, d)
	want = `add set random-4 { type ipv4_addr . inet_proto . inet_service }
add rule services ip daddr . meta l4proto . th dport @random-4 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 4 map @endpoints
add element cluster-frontends { 10.96.200.4 . tcp . 80 }
add element endpoints { 10.96.200.4 . tcp . 80 . 0x00000000 : 10.244.1.11 . 8080 }
add element endpoints { 10.96.200.4 . tcp . 80 . 0x00000001 : 10.244.1.12 . 8080 }
add element endpoints { 10.96.200.4 . tcp . 80 . 0x00000002 : 10.244.1.13 . 8080 }
add element endpoints { 10.96.200.4 . tcp . 80 . 0x00000003 : 10.244.1.14 . 8080 }
add element random-4 { 10.96.200.4 . tcp . 80 }
`
	if got := lastTx(t, f); got != want {
		t.Errorf("a port with 4 endpoints sent:\n%s\nwant:\n%s", got, want)
	}
	delete(d, four.Name)
	mustSync(t, p, d)
	if got := lastTx(t, f); strings.Contains(got, "random-4\n") || strings.Contains(got, "services") {
		t.Errorf("removing the only port with 4 endpoints sent:\n%s", got)
	}
	if _, err := p.Repair(); err != nil {
		t.Fatal(err)
	}
	if got := lastTx(t, f); !strings.Contains(got, "delete set random-4\n") || !strings.Contains(got, "flush chain services\n") {
		t.Errorf("the periodic check should take the empty class away; it sent:\n%s", got)
	}
	if f.Lists() != 2 {
		t.Errorf("the table was listed %d times; only the first sync and the repair should read it", f.Lists())
	}
}

// Whatever sequence of changes, the incremental model ends where a sync
// from scratch would: same table, to the element.
func TestIncrementalSyncMatchesFullSync(t *testing.T) {
	for _, fam := range []Family{IPv4, IPv6} {
		t.Run(fam.String(), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(fam)))
			p, f := fakeProxier(t, fam)
			addr := func(base string, i int) netip.Addr {
				a := netip.MustParseAddr(base).As16()
				a[15] = byte(i)
				if fam == IPv4 {
					return netip.AddrFrom16(a).Unmap()
				}
				return netip.AddrFrom16(a)
			}
			pick := func(base string) netip.Addr {
				if fam == IPv4 {
					return addr("::ffff:"+base, rng.IntN(8)+1)
				}
				return addr(base, rng.IntN(8)+1)
			}
			ep, vip, ext := "10.244.1.0", "10.96.0.0", "203.0.113.0"
			if fam == IPv6 {
				ep, vip, ext = "fd00:10:244:1::", "fd00:96::", "2001:db8:100::"
			}
			d := map[ServicePortName]ServicePort{}
			for step := range 400 {
				i := rng.IntN(12)
				name := ServicePortName{"ns", fmt.Sprintf("s%d", i), "p", []Protocol{TCP, UDP}[i%2]}
				sp, ok := d[name]
				if !ok {
					sp = ServicePort{Name: name, Port: 80}
					if fam == IPv4 {
						sp.ClusterIP = addr("::ffff:"+vip, i+1)
					} else {
						sp.ClusterIP = addr(vip, i+1)
					}
				}
				sp.Endpoints = append([]Endpoint(nil), sp.Endpoints...)
				sp.ExternalIPs = append([]netip.Addr(nil), sp.ExternalIPs...)
				switch rng.IntN(9) {
				case 0:
					delete(d, name)
					goto sync
				case 1, 2:
					sp.Endpoints = append(sp.Endpoints, Endpoint{pick(ep), 8080})
				case 3:
					if len(sp.Endpoints) > 0 {
						j := rng.IntN(len(sp.Endpoints))
						sp.Endpoints = append(sp.Endpoints[:j], sp.Endpoints[j+1:]...)
					}
				case 4:
					sp.Affinity = time.Duration(rng.IntN(3)) * time.Minute
				case 5:
					sp.NodePort = uint16(30000 + rng.IntN(3)*(i+1)) // sometimes shared
				case 6:
					// External IPs collide across services on purpose.
					sp.ExternalIPs = append(sp.ExternalIPs, pick(ext))
				case 7:
					sp.ExternalIPs = nil
				case 8:
					sp.Port = uint16(80 + rng.IntN(2))
				}
				sp.Normalize()
				d[name] = sp
			sync:
				mustSync(t, p, d)
				fresh, ff := fakeProxier(t, fam)
				mustSync(t, fresh, d)
				if got, want := canonical(f.Dump()), ff.Dump(); got != want {
					t.Fatalf("step %d: incremental table differs from a full sync.\nincremental:\n%s\nfull:\n%s", step, got, want)
				}
			}
			if f.Lists() != 1 {
				t.Errorf("the table was listed %d times in 400 syncs; only the first should read it", f.Lists())
			}
		})
	}
}

// canonical is a dump without the classes an incremental sync leaves
// empty, and with the class rules in a full sync's order: what a full
// sync would have.
func canonical(dump string) string {
	lines := strings.Split(dump, "\n")
	empty := map[string]bool{}
	for i, l := range lines {
		if rest, ok := strings.CutPrefix(l, "  set random-"); ok && (i+1 == len(lines) || !strings.HasPrefix(lines[i+1], "    ")) {
			name, _, _ := strings.Cut(rest, " ")
			empty["random-"+name] = true
		}
	}
	var out, classRules []string
	for _, l := range lines {
		drop := false
		for e := range empty {
			if strings.Contains(l, "@"+e+" ") || strings.HasPrefix(l, "  set "+e+" ") {
				drop = true
			}
		}
		switch {
		case drop:
		case strings.HasPrefix(l, "    ") && strings.Contains(l, " @random-"):
			classRules = append(classRules, l)
		default:
			if len(classRules) > 0 {
				slices.SortFunc(classRules, func(a, b string) int { return classOfRule(a) - classOfRule(b) })
				out = append(out, classRules...)
				classRules = nil
			}
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func classOfRule(r string) int {
	var n int
	_, _ = fmt.Sscanf(r[strings.Index(r, "@random-"):], "@random-%d", &n)
	return n
}

// Repair puts back what was changed behind the proxier's back, and only
// that.
func TestRepairFixesWhatChangedBehindItsBack(t *testing.T) {
	p, f := fakeProxier(t, IPv4)
	web := port("ns", "web", TCP, "10.96.0.10", 80, "10.244.1.11", "10.244.1.12")
	sticky := port("ns", "sticky", TCP, "10.96.0.12", 80, "10.244.1.11")
	sticky.Affinity = time.Minute
	mustSync(t, p, desired(web, sticky))
	good := f.Dump()
	if n, err := p.Repair(); err != nil || n != 0 {
		t.Fatalf("Repair of an untouched table = %d changes, %v; want 0", n, err)
	}

	// Another program changes the table, in a transaction of its own.
	tbl := nft.Table{Family: IPv4, Name: TableName}
	webFE := frontendKey(web.ClusterIP, TCP, 80)
	forged := frontendKey(netip.MustParseAddr("10.96.9.9"), TCP, 9)
	var tamper nft.Transaction
	tamper.DeleteElements(tbl, setClusterFrontends, []nft.Element{{Key: webFE}})
	tamper.FlushChain(tbl, chainServices)
	tamper.FlushChain(tbl, chainNATPrerouting)
	tamper.AddChain(tbl, nft.Chain{Name: "intruder"})
	tamper.AddRule(tbl, nft.Rule{Chain: "intruder", Text: "drop", Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
	tamper.AddElements(tbl, setNoEndpoints, []nft.Element{{Key: forged}})
	tamper.DeleteElements(tbl, setEndpoints, []nft.Element{{Key: webFE + string(indexKey(1))}})
	tamper.AddElements(tbl, setEndpoints, []nft.Element{{Key: webFE + string(indexKey(1)), Data: endpointVal(Endpoint{netip.MustParseAddr("10.9.9.9"), 1})}})
	tamper.FlushChain(tbl, "svc-ns/sticky/tcp/p")
	tamper.FlushChain(tbl, "ep-ns/sticky/tcp/p__10.244.1.11/8080")
	tamper.DeleteSet(tbl, "aff-ns/sticky/tcp/p__10.244.1.11/8080")
	if err := f.Run(&tamper); err != nil {
		t.Fatal(err)
	}

	n, err := p.Repair()
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Dump(); got != good {
		t.Errorf("after repair:\n%s\nwant:\n%s", got, good)
	}
	want := `delete element endpoints { 10.96.0.10 . tcp . 80 . 0x00000001 }
delete element no-endpoint-frontends { 10.96.9.9 . tcp . 9 }
flush chain ep-ns/sticky/tcp/p__10.244.1.11/8080
flush chain intruder
flush chain nat-prerouting
flush chain services
flush chain svc-ns/sticky/tcp/p
delete chain intruder
add set aff-ns/sticky/tcp/p__10.244.1.11/8080 { type ipv4_addr; flags dynamic,timeout; timeout 1m0s; size 65535 }
add rule ep-ns/sticky/tcp/p__10.244.1.11/8080 update @aff-ns/sticky/tcp/p__10.244.1.11/8080 { ip saddr } (timeout 1m0s) dnat ip to 10.244.1.11:8080
add rule nat-prerouting jump services
add rule services ip daddr . meta l4proto . th dport @cluster-frontends ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x00004000
add rule services ip daddr . meta l4proto . th dport @external-frontends meta mark set meta mark | 0x00004000
add rule services ip daddr . meta l4proto . th dport vmap @affinity-services
add rule services ip daddr . meta l4proto . th dport @random-2 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @endpoints
add rule svc-ns/sticky/tcp/p ip saddr @aff-ns/sticky/tcp/p__10.244.1.11/8080 goto ep-ns/sticky/tcp/p__10.244.1.11/8080
add rule svc-ns/sticky/tcp/p ip daddr . meta l4proto . th dport . numgen random mod 1 vmap @affinity-endpoints
add element cluster-frontends { 10.96.0.10 . tcp . 80 }
add element endpoints { 10.96.0.10 . tcp . 80 . 0x00000001 : 10.244.1.12 . 8080 }
`
	if got := lastTx(t, f); got != want {
		t.Errorf("repair sent:\n%s\nwant:\n%s", got, want)
	}
	if n != strings.Count(want, "\n") {
		t.Errorf("Repair reported %d changes, sent %d", n, strings.Count(want, "\n"))
	}
	if n, err := p.Repair(); err != nil || n != 0 {
		t.Errorf("second Repair = %d changes, %v; want 0", n, err)
	}

	// The whole table gone: rebuilt in one go.
	var del nft.Transaction
	del.DeleteTable(tbl)
	if err := f.Run(&del); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Repair(); err != nil {
		t.Fatal(err)
	}
	if got := f.Dump(); got != good {
		t.Errorf("after the table was deleted and repaired:\n%s\nwant:\n%s", got, good)
	}
}

// A batch the kernel refuses leaves the model unsure; the next sync reads
// the table and converges.
func TestFailedSyncRereadsTheTable(t *testing.T) {
	p, f := fakeProxier(t, IPv4)
	web := port("ns", "web", TCP, "10.96.0.10", 80, "10.244.1.11")
	mustSync(t, p, desired(web))
	web.Endpoints = append(web.Endpoints, Endpoint{netip.MustParseAddr("10.244.1.12"), 8080})
	f.FailNext(unix.ENOMEM)
	if _, err := p.Sync(desired(web)); !errors.Is(err, unix.ENOMEM) {
		t.Fatalf("Sync with a failing kernel = %v, want ENOMEM", err)
	}
	mustSync(t, p, desired(web))
	if f.Lists() != 2 {
		t.Errorf("table listed %d times, want 2 (first sync, and the one after the failure)", f.Lists())
	}
	fresh, ff := fakeProxier(t, IPv4)
	mustSync(t, fresh, desired(web))
	if got, want := f.Dump(), ff.Dump(); got != want {
		t.Errorf("after recovery:\n%s\nwant:\n%s", got, want)
	}
}

// A proxier started on a table an earlier one left changes nothing that
// is right: no connection nor affinity is disturbed by an agent restart.
func TestNewProxierAdoptsTheTable(t *testing.T) {
	p, f := fakeProxier(t, IPv6)
	web := port("ns", "web", TCP, "fd00:96::10", 80, "fd00:10:244:1::11", "fd00:10:244:1::12")
	web.Affinity = time.Hour
	mustSync(t, p, desired(web))
	again := newProxier(IPv6, Options{NodeIPs: []netip.Addr{netip.MustParseAddr("2001:db8::1")},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/56")}}, f)
	if n := mustSync(t, again, desired(web)); n != 0 {
		t.Errorf("restarted proxier changed %d objects:\n%s", n, lastTx(t, f))
	}
}

// Two Services claiming one external IP and port: one wins, by name, and
// the other takes over when it leaves.
func TestConflictingFrontends(t *testing.T) {
	p, f := fakeProxier(t, IPv4)
	a := port("ns", "a", TCP, "10.96.0.10", 80, "10.244.1.11")
	b := port("ns", "b", TCP, "10.96.0.11", 80, "10.244.1.12")
	a.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.5")}
	b.ExternalIPs = a.ExternalIPs
	mustSync(t, p, desired(b, a))
	if d := f.Dump(); !strings.Contains(d, "203.0.113.5 . tcp . 80 . 0x00000000 : 10.244.1.11 . 8080") || strings.Contains(d, "203.0.113.5 . tcp . 80 . 0x00000000 : 10.244.1.12") {
		t.Errorf("ns/a should own the shared external IP:\n%s", d)
	}
	mustSync(t, p, desired(b, a))
	mustSync(t, p, desired(b))
	if d := f.Dump(); !strings.Contains(d, "203.0.113.5 . tcp . 80 . 0x00000000 : 10.244.1.12 . 8080") {
		t.Errorf("ns/b should own the shared external IP once ns/a is gone:\n%s", d)
	}
	// The conflict resolved incrementally ends where a full sync would.
	mustSync(t, p, desired(a, b))
	fresh, ff := fakeProxier(t, IPv4)
	mustSync(t, fresh, desired(a, b))
	if got, want := f.Dump(), ff.Dump(); got != want {
		t.Errorf("after the conflict came back:\n%s\nwant:\n%s", got, want)
	}
}

// A port the family cannot serve is left out; the others are served.
func TestPortsOfTheWrongFamilyAreLeftOut(t *testing.T) {
	p, f := fakeProxier(t, IPv6)
	good := port("ns", "good", TCP, "fd00:96::10", 80, "fd00:10:244:1::11")
	bad := port("ns", "bad", TCP, "10.96.0.10", 80, "10.244.1.11")
	mustSync(t, p, desired(good, bad))
	if d := f.Dump(); strings.Contains(d, "10.96.0.10") || !strings.Contains(d, "fd00:96::10 . tcp . 80") {
		t.Errorf("table:\n%s", d)
	}
}
