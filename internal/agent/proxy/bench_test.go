package proxy

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duet-net/duet/internal/nft"
)

// benchServices is the scale of the benchmarks: services per family, each
// with one TCP port and three endpoints.
const benchServices = 10000

func benchAddr(f Family, base string, i int) netip.Addr {
	a := netip.MustParseAddr(base).As16()
	a[13], a[14], a[15] = byte(i>>16), byte(i>>8), byte(i)
	if f == IPv4 {
		b := netip.MustParseAddr(base).As4()
		b[1], b[2], b[3] = b[1]+byte(i>>16), byte(i>>8), byte(i)
		return netip.AddrFrom4(b)
	}
	return netip.AddrFrom16(a)
}

func benchPort(f Family, i int) ServicePort {
	vip, ep := "10.96.0.0", "10.128.0.0"
	if f == IPv6 {
		vip, ep = "fd00:96::", "fd00:10:244::"
	}
	sp := ServicePort{Name: ServicePortName{"bench", fmt.Sprintf("svc%d", i), "http", TCP}, ClusterIP: benchAddr(f, vip, i), Port: 80}
	for j := range 3 {
		sp.Endpoints = append(sp.Endpoints, Endpoint{benchAddr(f, ep, i*3+j), 8080})
	}
	return sp
}

func benchDesired(f Family, n int) map[ServicePortName]ServicePort {
	d := make(map[ServicePortName]ServicePort, n)
	for i := range n {
		sp := benchPort(f, i)
		d[sp.Name] = sp
	}
	return d
}

func benchOptions(ns string) Options {
	return Options{NetNS: nsPath(ns), NodeIPs: []netip.Addr{nodeIP4, nodeIP6}, ClusterCIDRs: testClusterCIDRs}
}

// BenchmarkProxier programs 10,000 services with 3 endpoints in each
// family, in a namespace of its own, then measures what the agent does all
// day: one more service, one endpoint less, and the periodic check.
//
//	go test -run - -bench Proxier -benchtime 200x ./internal/agent/proxy/
func BenchmarkProxier(b *testing.B) {
	requireRoot(b)
	ns := newNS(b, "bench")
	desired := map[Family]map[ServicePortName]ServicePort{IPv4: benchDesired(IPv4, benchServices), IPv6: benchDesired(IPv6, benchServices)}
	proxiers := map[Family]*Proxier{}

	b.Run("cold-10k-services-2-families", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			for _, p := range proxiers {
				if err := p.Remove(); err != nil {
					b.Fatal(err)
				}
				p.Close()
			}
			for _, f := range []Family{IPv4, IPv6} {
				p, err := NewProxier(f, benchOptions(ns))
				if err != nil {
					b.Fatal(err)
				}
				proxiers[f] = p
			}
			b.StartTimer()
			// Both families at once, as Run does.
			var wg sync.WaitGroup
			errs := make(chan error, 2)
			times := map[Family]time.Duration{}
			var mu sync.Mutex
			for f, p := range proxiers {
				wg.Go(func() {
					start := time.Now()
					if _, err := p.Sync(desired[f]); err != nil {
						errs <- err
					}
					mu.Lock()
					times[f] = time.Since(start)
					mu.Unlock()
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			b.ReportMetric(times[IPv4].Seconds(), "ipv4-s")
			b.ReportMetric(times[IPv6].Seconds(), "ipv6-s")
		}
	})
	if len(proxiers) == 0 {
		b.Fatal("the cold sync did not run")
	}

	for _, f := range []Family{IPv4, IPv6} {
		p := proxiers[f]
		b.Run(f.String()+"/add-1-service", func(b *testing.B) {
			d := desired[f]
			for i := range b.N {
				sp := benchPort(f, benchServices+i)
				d[sp.Name] = sp
				if _, err := p.Sync(d); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			for i := range b.N {
				delete(d, benchPort(f, benchServices+i).Name)
			}
			if _, err := p.Sync(d); err != nil {
				b.Fatal(err)
			}
		})
		b.Run(f.String()+"/remove-1-endpoint", func(b *testing.B) {
			d := desired[f]
			for i := range b.N {
				sp := benchPort(f, i%benchServices)
				sp.Endpoints = sp.Endpoints[:2]
				d[sp.Name] = sp
				if _, err := p.Sync(d); err != nil {
					b.Fatal(err)
				}
				if i%benchServices == benchServices-1 {
					b.StopTimer()
					for j := range benchServices {
						sp := benchPort(f, j)
						d[sp.Name] = sp
					}
					if _, err := p.Sync(d); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			}
		})
		// The first port with 7 endpoints brings a set and a rule (the
		// services chain is rewritten), the last one takes them away.
		b.Run(f.String()+"/new-endpoint-count", func(b *testing.B) {
			d := desired[f]
			sp := benchPort(f, benchServices)
			for j := range 4 {
				sp.Endpoints = append(sp.Endpoints, Endpoint{benchAddr(f, "10.200.0.0", j), 8080})
			}
			if f == IPv6 {
				sp.Endpoints = sp.Endpoints[:3]
				for j := range 4 {
					sp.Endpoints = append(sp.Endpoints, Endpoint{benchAddr(f, "fd00:200::", j), 8080})
				}
			}
			for i := range b.N {
				if i%2 == 0 {
					d[sp.Name] = sp
				} else {
					delete(d, sp.Name)
				}
				if _, err := p.Sync(d); err != nil {
					b.Fatal(err)
				}
			}
			delete(d, sp.Name)
			if _, err := p.Sync(d); err != nil {
				b.Fatal(err)
			}
		})
		b.Run(f.String()+"/periodic-check", func(b *testing.B) {
			// The first one prunes the class new-endpoint-count left empty.
			if _, err := p.Repair(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				n, err := p.Repair()
				if err != nil || n != 0 {
					b.Fatalf("Repair of an untouched table = %d changes, %v", n, err)
				}
			}
		})
	}
	b.Run("nothing-changed", func(b *testing.B) {
		for range b.N {
			if _, err := proxiers[IPv4].Sync(desired[IPv4]); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, p := range proxiers {
		p.Close()
	}
}

// BenchmarkNftFile applies the same services with `nft -f` from a file,
// laid out the way kube-proxy's nftables mode lays them out (a chain per
// service and a chain per endpoint), and with a chain per service only
// (endpoints in an anonymous dnat map): the path knftables and kube-proxy
// take. It is slow: it runs 1,000 services per family unless
// DUET_BENCH_NFT=1 asks for the full 10,000.
//
//	DUET_BENCH_NFT=1 go test -run - -bench NftFile -benchtime 1x -timeout 60m ./internal/agent/proxy/
func BenchmarkNftFile(b *testing.B) {
	requireRoot(b)
	n := 1000
	if os.Getenv("DUET_BENCH_NFT") == "1" {
		n = benchServices
	}
	for _, layout := range []string{"chain-per-endpoint", "chain-per-service"} {
		b.Run(fmt.Sprintf("%s/%d-services-2-families", layout, n), func(b *testing.B) {
			var sb strings.Builder
			for _, f := range []Family{IPv4, IPv6} {
				writeKubeProxyRuleset(&sb, f, benchDesired(f, n), layout == "chain-per-endpoint")
			}
			file := filepath.Join(b.TempDir(), "ruleset.nft")
			if err := os.WriteFile(file, []byte(sb.String()), 0o644); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				ns := newNS(b, "nftfile")
				b.StartTimer()
				if out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-f", file).CombinedOutput(); err != nil {
					b.Fatalf("nft -f: %v\n%s", err, out)
				}
			}
		})
	}
}

// writeKubeProxyRuleset writes a full sync of kube-proxy's nftables mode
// (v1.31 layout, ClusterIP services only) for one family.
func writeKubeProxyRuleset(w *strings.Builder, f Family, ports map[ServicePortName]ServicePort, chainPerEndpoint bool) {
	kw, at := "ip", "ipv4_addr"
	cidr := "10.244.0.0/16"
	if f == IPv6 {
		kw, at, cidr = "ip6", "ipv6_addr", "fd00:10:244::/56"
	}
	t := kw + " kube-proxy"
	fmt.Fprintf(w, `add table %[1]s { comment "rules for kube-proxy" ; }
add chain %[1]s mark-for-masquerade
add rule %[1]s mark-for-masquerade mark set mark or 0x4000
add chain %[1]s masquerading
add rule %[1]s masquerading mark and 0x4000 == 0 return
add rule %[1]s masquerading mark set mark xor 0x4000
add rule %[1]s masquerading masquerade fully-random
add chain %[1]s services
add chain %[1]s nat-prerouting { type nat hook prerouting priority -100 ; }
add rule %[1]s nat-prerouting jump services
add chain %[1]s nat-output { type nat hook output priority -100 ; }
add rule %[1]s nat-output jump services
add chain %[1]s nat-postrouting { type nat hook postrouting priority 100 ; }
add rule %[1]s nat-postrouting jump masquerading
add map %[1]s service-ips { type %[2]s . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add rule %[1]s services %[3]s daddr . meta l4proto . th dport vmap @service-ips
`, t, at, kw)
	for _, sp := range ports {
		svc := fmt.Sprintf("service-%08X-%s/%s/tcp/%s", hash8(sp.Name.String()), sp.Name.Namespace, sp.Name.Name, sp.Name.Port)
		fmt.Fprintf(w, "add chain %s %s\n", t, svc)
		fmt.Fprintf(w, "add rule %s %s %s daddr %s tcp dport %d %s saddr != %s jump mark-for-masquerade\n", t, svc, kw, sp.ClusterIP, sp.Port, kw, cidr)
		var arms []string
		for i, e := range sp.Endpoints {
			if chainPerEndpoint {
				ep := fmt.Sprintf("endpoint-%08X-%s/%s/tcp/%s__%s/%d", hash8(sp.Name.String()+e.String()), sp.Name.Namespace, sp.Name.Name, sp.Name.Port,
					strings.ReplaceAll(e.Addr.String(), ":", "-"), e.Port)
				fmt.Fprintf(w, "add chain %s %s\n", t, ep)
				fmt.Fprintf(w, "add rule %s %s %s saddr %s jump mark-for-masquerade\n", t, ep, kw, e.Addr)
				fmt.Fprintf(w, "add rule %s %s meta l4proto tcp dnat to %s\n", t, ep, e)
				arms = append(arms, fmt.Sprintf("%d : goto %s", i, ep))
			} else {
				arms = append(arms, fmt.Sprintf("%d : %s . %d", i, e.Addr, e.Port))
			}
		}
		if chainPerEndpoint {
			fmt.Fprintf(w, "add rule %s %s numgen random mod %d vmap { %s }\n", t, svc, len(arms), strings.Join(arms, " , "))
		} else {
			fmt.Fprintf(w, "add rule %s %s meta l4proto tcp dnat %s to numgen random mod %d map { %s }\n", t, svc, kw, len(arms), strings.Join(arms, " , "))
		}
		fmt.Fprintf(w, "add element %s service-ips { %s . tcp . %d : goto %s }\n", t, sp.ClusterIP, sp.Port, svc)
	}
}

func hash8(s string) uint32 {
	var h uint32 = 2166136261
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return h
}

// BenchmarkDiff is the proxier's own share of a sync with 10,000 ports,
// against the in-memory fake: nothing changed, and one endpoint less.
func BenchmarkDiff(b *testing.B) {
	f := nft.NewFake()
	p := newProxier(IPv4, Options{NodeIPs: []netip.Addr{nodeIP4}, ClusterCIDRs: testClusterCIDRs}, f)
	d := benchDesired(IPv4, benchServices)
	if _, err := p.Sync(d); err != nil {
		b.Fatal(err)
	}
	b.Run("nothing-changed", func(b *testing.B) {
		for range b.N {
			if _, err := p.Sync(d); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("remove-1-endpoint", func(b *testing.B) {
		for i := range b.N {
			sp := benchPort(IPv4, i%benchServices)
			if i/benchServices%2 == 0 {
				sp.Endpoints = sp.Endpoints[:2]
			}
			d[sp.Name] = sp
			if _, err := p.Sync(d); err != nil {
				b.Fatal(err)
			}
		}
	})
}
