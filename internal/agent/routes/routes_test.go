package routes

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func node(name string, cidrs []string, ips ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	return n
}

func TestDesired(t *testing.T) {
	nodes := []*corev1.Node{
		node("self", []string{"10.244.0.0/24", "fd00:10:244::/64"}, "203.0.113.10", "2001:db8::10"),
		node("b", []string{"fd00:10:244:1::/64", "10.244.1.0/24"}, "2001:db8::11", "203.0.113.11"),
		node("only-v4-ip", []string{"10.244.2.0/24", "fd00:10:244:2::/64"}, "203.0.113.12"),
		node("no-cidrs", nil, "203.0.113.13", "2001:db8::13"),
	}
	got := Desired("self", nodes)
	want := []Route{
		{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParseAddr("203.0.113.11")},
		{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParseAddr("203.0.113.12")},
		{netip.MustParsePrefix("fd00:10:244:1::/64"), netip.MustParseAddr("2001:db8::11")},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Desired = %v\nwant %v", got, want)
	}
}

// TestSyncInNamespace programs routes in a namespace the test makes: it
// adds, changes and deletes only Duet's routes.
func TestSyncInNamespace(t *testing.T) {
	ns := fmt.Sprintf("duet-routes-test-%d", os.Getpid())
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run(t, "ip", "-n", ns, "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1")
	run(t, "ip", "-n", ns, "link", "set", "dummy1", "up")
	run(t, "ip", "-n", ns, "link", "set", "dummy0", "up")
	run(t, "ip", "-n", ns, "addr", "add", "203.0.113.10/24", "dev", "dummy0")
	run(t, "ip", "-n", ns, "addr", "add", "2001:db8::10/64", "dev", "dummy0", "nodad")
	// A route that is not Duet's must survive every sync.
	run(t, "ip", "-n", ns, "route", "add", "198.51.100.0/24", "via", "203.0.113.1")

	p, err := NewProgrammer("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	want := []Route{
		{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParseAddr("203.0.113.11")},
		{netip.MustParsePrefix("fd00:10:244:1::/64"), netip.MustParseAddr("2001:db8::11")},
	}
	if a, d, err := p.Sync(want); err != nil || a != 2 || d != 0 {
		t.Fatalf("first Sync = %d added, %d deleted, %v", a, d, err)
	}
	if a, d, err := p.Sync(want); err != nil || a != 0 || d != 0 {
		t.Fatalf("idempotent Sync = %d added, %d deleted, %v", a, d, err)
	}
	routes := run(t, "ip", "-n", ns, "route") + run(t, "ip", "-n", ns, "-6", "route")
	for _, s := range []string{"10.244.1.0/24 via 203.0.113.11", "fd00:10:244:1::/64 via 2001:db8::11", "198.51.100.0/24 via 203.0.113.1"} {
		if !strings.Contains(routes, s) {
			t.Fatalf("missing %q in:\n%s", s, routes)
		}
	}
	// The next hop moves, a route goes away.
	want = []Route{{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParseAddr("203.0.113.12")}}
	if a, d, err := p.Sync(want); err != nil || a != 1 || d != 1 {
		t.Fatalf("changing Sync = %d added, %d deleted, %v", a, d, err)
	}
	routes = run(t, "ip", "-n", ns, "route") + run(t, "ip", "-n", ns, "-6", "route")
	if !strings.Contains(routes, "10.244.1.0/24 via 203.0.113.12") || strings.Contains(routes, "fd00:10:244:1::/64") || !strings.Contains(routes, "198.51.100.0/24") {
		t.Fatalf("after change:\n%s", routes)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
