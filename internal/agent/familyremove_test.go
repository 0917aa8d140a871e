package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/duet-net/duet/internal/agent/clusterdns"
	"github.com/duet-net/duet/internal/agent/nodestatus"
	"github.com/duet-net/duet/internal/netns"
	"github.com/duet-net/duet/internal/testutil/roottest"
)

func TestOfFamilies(t *testing.T) {
	v4, v6 := netip.MustParseAddr("203.0.113.11"), netip.MustParseAddr("2001:db8::11")
	c4, c6 := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")
	id := func(a netip.Addr) netip.Addr { return a }
	for _, tt := range []struct {
		name  string
		ips   []netip.Addr
		cidrs []netip.Prefix
		want  []netip.Addr
	}{
		{"the family dropped goes", []netip.Addr{v4, v6}, []netip.Prefix{c4}, []netip.Addr{v4}},
		{"IPv6 primary", []netip.Addr{v6, v4}, []netip.Prefix{c6}, []netip.Addr{v6}},
		{"both kept", []netip.Addr{v4, v6}, []netip.Prefix{c4, c6}, []netip.Addr{v4, v6}},
		{"no pod CIDRs yet: all kept", []netip.Addr{v4, v6}, nil, []netip.Addr{v4, v6}},
		{"none would be left: all kept", []netip.Addr{v4}, []netip.Prefix{c6}, []netip.Addr{v4}},
	} {
		if got := ofFamilies(tt.ips, tt.cidrs, id); !slices.Equal(got, tt.want) {
			t.Errorf("%s: ofFamilies(%v, %v) = %v, want %v", tt.name, tt.ips, tt.cidrs, got, tt.want)
		}
	}
	flags := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
	if got := ofFamilies(flags, []netip.Prefix{c4}, netip.Prefix.Addr); !slices.Equal(got, flags[:1]) {
		t.Errorf("cluster CIDRs of a node with an IPv4 pod CIDR: %v", got)
	}
}

// An agent restarted with --node-ip and --cluster-cidr of both families
// on a node whose Node has one pod CIDR (the cluster dropped a family)
// serves that family alone.
func TestWithNodeFamiliesDropsAFamily(t *testing.T) {
	v4, v6 := netip.MustParseAddr("203.0.113.11"), netip.MustParseAddr("2001:db8::11")
	cfg := Config{NodeName: "node1", InternalIPs: []netip.Addr{v4, v6},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}}
	find := func(bool) (netip.Addr, error) { return netip.Addr{}, errors.New("not asked") }
	got := withNodeFamilies(context.Background(), fake.NewClientset(node("node1", "10.244.1.0/24")), cfg, find)
	if !slices.Equal(got.InternalIPs, []netip.Addr{v4}) || !slices.Equal(got.ClusterCIDRs, cfg.ClusterCIDRs[:1]) {
		t.Errorf("got InternalIPs %v, ClusterCIDRs %v; want the IPv4 ones", got.InternalIPs, got.ClusterCIDRs)
	}
	// A Node not registered yet: the flags as they are.
	got = withNodeFamilies(context.Background(), fake.NewClientset(), cfg, find)
	if !slices.Equal(got.InternalIPs, cfg.InternalIPs) || !slices.Equal(got.ClusterCIDRs, cfg.ClusterCIDRs) {
		t.Errorf("without a Node: %+v", got)
	}
}

// nftTables lists the tables of a namespace, "ip duet-proxy" and so on,
// each with its handle.
func nftTables(t *testing.T, ns string) map[string]string {
	t.Helper()
	out := roottest.RunIn(t, ns, "nft", "-a", "list", "ruleset")
	tables := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^table (\S+ \S+) \{ # handle (\d+)`).FindAllStringSubmatch(out, -1) {
		tables[m[1]] = m[2]
	}
	return tables
}

// canBind reports whether port 53 of a is free in the namespace at path.
func canBind(t *testing.T, path string, a netip.Addr) bool {
	t.Helper()
	free := false
	err := netns.Do(path, func() error {
		c, err := net.ListenPacket("udp", netip.AddrPortFrom(a, clusterdns.Port).String())
		if err == nil {
			free = true
			return c.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return free
}

// The follower of a dual-stack node whose Node's pod CIDRs shrink to
// IPv4: the Node's InternalIPs lose the IPv6 address (the interface keeps
// it), the service proxy's and masquerading's ip6 tables go while their
// ip tables stay (the proxy's the very same table, never made anew), and
// cluster DNS stops listening on the IPv6 address. When the family comes
// back, so do they, with --node-ip's address.
func TestFollowerDropsAFamily(t *testing.T) {
	roottest.Require(t, "nft", "ip")
	ns := roottest.NetNS(t, "duetagent-", "node")
	path := netns.Path(ns)
	v4, v6 := netip.MustParseAddr("203.0.113.11"), netip.MustParseAddr("2001:db8::11")
	roottest.RunIn(t, ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	roottest.RunIn(t, ns, "ip", "link", "set", "eth1", "up")
	roottest.RunIn(t, ns, "ip", "link", "set", "eth0", "up")
	roottest.RunIn(t, ns, "ip", "addr", "add", "203.0.113.11/24", "dev", "eth0")
	// Another IPv6 address first: the one --node-ip names comes back.
	roottest.RunIn(t, ns, "ip", "addr", "add", "2001:db8::99/64", "dev", "eth0", "nodad")
	roottest.RunIn(t, ns, "ip", "addr", "add", "2001:db8::11/64", "dev", "eth0", "nodad")

	dual := node("node1", "10.244.1.0/24", "fd00:10:244:1::/64")
	client := fake.NewClientset(dual)
	cfg := Config{NodeName: "node1", NetNS: path, InternalIPs: []netip.Addr{v4, v6},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:10:96::/108")}}
	reporter := &nodestatus.Reporter{Client: client, NodeName: "node1", InternalIPs: cfg.InternalIPs, Capacity: corev1.ResourceList{}}
	l, err := clusterdns.Listen(path, cfg.InternalIPs, clusterdns.Port)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	fol := newFollower(client, cfg, log, reporter, record.NewFakeRecorder(100), &corev1.ObjectReference{Kind: "Node", Name: "node1"})
	fol.setDNS(l)
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		fol.mu.Lock()
		defer fol.mu.Unlock()
		fol.waitStopped(fol.proxyDone, "proxy")
		fol.waitStopped(fol.masqDone, "masq")
	}()
	fol.start(ctx)
	all := []string{"ip duet-proxy", "ip6 duet-proxy", "ip duet-masq", "ip6 duet-masq"}
	var before map[string]string
	roottest.Eventually(t, 20*time.Second, "the proxy's and masquerading's tables of both families", func() error {
		before = nftTables(t, ns)
		for _, tb := range all {
			if before[tb] == "" {
				return fmt.Errorf("no table %s: %v", tb, before)
			}
		}
		return nil
	})
	if canBind(t, path, v6) {
		t.Fatalf("nothing listens on [%s]:53 before the change", v6)
	}

	single := dual.DeepCopy()
	single.Spec.PodCIDRs = single.Spec.PodCIDRs[:1]
	fol.update(ctx, []*corev1.Node{single})
	internal := func() []string {
		n, err := client.CoreV1().Nodes().Get(ctx, "node1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				out = append(out, a.Address)
			}
		}
		return out
	}
	if got := internal(); !slices.Equal(got, []string{v4.String()}) {
		t.Errorf("the Node's InternalIPs after the change: %v; want %s alone", got, v4)
	}
	roottest.Eventually(t, 20*time.Second, "the ip6 tables gone, the ip ones kept", func() error {
		now := nftTables(t, ns)
		if now["ip6 duet-proxy"] != "" || now["ip6 duet-masq"] != "" || now["ip duet-masq"] == "" {
			return fmt.Errorf("tables %v", now)
		}
		if now["ip duet-proxy"] != before["ip duet-proxy"] {
			return fmt.Errorf("the ip duet-proxy table is another (handle %s, was %s)", now["ip duet-proxy"], before["ip duet-proxy"])
		}
		return nil
	})
	if !canBind(t, path, v6) {
		t.Errorf("cluster DNS still listens on [%s]:53", v6)
	}
	if canBind(t, path, v4) {
		t.Errorf("cluster DNS stopped listening on %s:53 too", v4)
	}
	if out := roottest.RunIn(t, ns, "ip", "-6", "addr", "show", "dev", "eth0"); !strings.Contains(out, v6.String()+"/64") {
		t.Errorf("the node's interface lost %s:\n%s", v6, out)
	}

	// The family comes back: --node-ip's address, not the interface's first.
	fol.update(ctx, []*corev1.Node{dual})
	if got := internal(); !slices.Equal(got, []string{v4.String(), v6.String()}) {
		t.Errorf("the Node's InternalIPs after the family came back: %v; want %s and %s", got, v4, v6)
	}
	roottest.Eventually(t, 20*time.Second, "the ip6 tables back", func() error {
		now := nftTables(t, ns)
		for _, tb := range all {
			if now[tb] == "" {
				return fmt.Errorf("no table %s: %v", tb, now)
			}
		}
		return nil
	})
	if canBind(t, path, v6) {
		t.Errorf("cluster DNS does not listen on [%s]:53 again", v6)
	}
	fol.mu.Lock()
	for _, l := range fol.dns[1:] {
		defer l.Close()
	}
	fol.mu.Unlock()
}
