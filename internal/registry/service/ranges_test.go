package service

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/apis/core"
)

func mkRange(t *testing.T, cidr string, primary bool, store alloc.Store) *alloc.ServiceRange {
	t.Helper()
	r, err := alloc.NewServiceRange(netip.MustParsePrefix(cidr), alloc.ServiceRangeOptions{Primary: primary, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func cfgFamilies(cfg Config) string {
	var s []string
	for _, f := range cfg.Families() {
		s = append(s, string(f))
	}
	return strings.Join(s, ",")
}

// A ServiceCIDR applied to a running cluster: SetRanges changes the
// families at once, and requests see the new ones.
func TestSetRangesChangesFamilies(t *testing.T) {
	v4 := mkRange(t, "10.96.0.0/24", true, nil)
	v6 := mkRange(t, "fd00:96::/120", false, nil)
	extra4 := mkRange(t, "203.0.113.0/24", false, nil)
	tests := []struct {
		name     string
		gate     bool
		ranges   []Range
		families string
		wantErr  string
	}{
		{name: "the primary range alone", gate: true, ranges: []Range{{v4, true}}, families: "IPv4"},
		{name: "an IPv6 range turns the cluster dual-stack", gate: true, ranges: []Range{{v4, true}, {v6, true}}, families: "IPv4,IPv6"},
		{name: "an IPv6 range that is not ready adds no family", gate: true, ranges: []Range{{v4, true}, {v6, false}}, families: "IPv4"},
		{name: "a second IPv4 range adds no family", gate: true, ranges: []Range{{v4, true}, {extra4, true}}, families: "IPv4"},
		{name: "the gate off ignores the other family", gate: false, ranges: []Range{{v4, true}, {v6, true}}, families: "IPv4"},
		{name: "the primary family cannot go", gate: true, ranges: []Range{{v6, true}},
			wantErr: "service IP allocators: no ready service range of the primary family IPv4"},
		{name: "the primary family needs a ready range", gate: true, ranges: []Range{{v4, false}, {v6, true}},
			wantErr: "service IP allocators: no ready service range of the primary family IPv4"},
		{name: "one range must keep the kubernetes Service's address", gate: true, ranges: []Range{{extra4, true}},
			wantErr: "service IP allocators: the primary range 203.0.113.0/24 must reserve 203.0.113.1 for the kubernetes Service (create it as Primary)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, _ := newAllocators(t, Config{Ranges: []netip.Prefix{v4Range}, DualStack: tt.gate})
			before := cfgFamilies(a.Config())
			err := a.SetRanges(tt.ranges)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("SetRanges = %v, want %q", err, tt.wantErr)
				}
				if got := cfgFamilies(a.Config()); got != before {
					t.Errorf("a refused SetRanges changed the families from %s to %s", before, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := cfgFamilies(a.Config()); got != tt.families {
				t.Errorf("families %s, want %s", got, tt.families)
			}
		})
	}
}

// On an IPv4 cluster gaining an IPv6 range, a PreferDualStack Service gets
// both families and RequireDualStack is accepted, as on a cluster born
// dual-stack; before, RequireDualStack is refused.
func TestSetRangesDualStackServices(t *testing.T) {
	a, _ := newAllocators(t, Config{Ranges: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/24")}, DualStack: true})
	require := newService(named("ns", "require"), policy(corev1.IPFamilyPolicyRequireDualStack))
	if _, err := a.AllocateCreate(ctx, require.DeepCopy(), false); !apierrors.IsInvalid(err) {
		t.Fatalf("RequireDualStack on an IPv4-only cluster: %v, want a 422", err)
	}
	v4 := a.Ranges()[0]
	v6 := mkRange(t, "fd00:96::/120", false, nil)
	if err := a.SetRanges([]Range{{v4, true}, {v6, true}}); err != nil {
		t.Fatal(err)
	}
	for _, svc := range []*core.Service{
		newService(named("ns", "prefer"), policy(corev1.IPFamilyPolicyPreferDualStack)),
		require,
	} {
		txn, err := a.AllocateCreate(ctx, svc, false)
		if err != nil {
			t.Fatalf("%s: %v", svc.Name, err)
		}
		txn.Commit()
		if !slices.Equal(svc.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}) || len(svc.Spec.ClusterIPs) != 2 ||
			!netip.MustParsePrefix("fd00:96::/120").Contains(netip.MustParseAddr(svc.Spec.ClusterIPs[1])) {
			t.Errorf("%s: ipFamilies %v clusterIPs %v, want an IPv4 and an IPv6 address of fd00:96::/120", svc.Name, svc.Spec.IPFamilies, svc.Spec.ClusterIPs)
		}
	}
	// An existing single-stack Service upgrades when asked to.
	old := newService(named("ns", "old"))
	txn, err := a.AllocateCreate(ctx, old, false)
	if err != nil {
		t.Fatal(err)
	}
	txn.Commit()
	up := old.DeepCopy()
	prefer := corev1.IPFamilyPolicyPreferDualStack
	up.Spec.IPFamilyPolicy = &prefer
	up.Spec.IPFamilies = nil
	if txn, err = a.AllocateUpdate(ctx, up, old, false); err != nil {
		t.Fatal(err)
	}
	txn.Commit()
	if len(up.Spec.ClusterIPs) != 2 || up.Spec.ClusterIPs[0] != old.Spec.ClusterIPs[0] {
		t.Errorf("upgrade: clusterIPs %v, want %s and an IPv6 one", up.Spec.ClusterIPs, old.Spec.ClusterIPs[0])
	}
}

// Several ranges of one family (ServiceCIDRs beside the default one):
// chosen addresses are taken in whichever holds them, drawn ones come
// from the default range until it is full, then from the others; a range
// that is not ready gives nothing new but takes addresses back.
func TestSeveralRangesOfOneFamily(t *testing.T) {
	store := alloc.NewMemStore()
	def := mkRange(t, "10.0.0.0/29", true, store) // 6 usable, 1 reserved
	extra := mkRange(t, "203.0.113.0/24", false, store)
	a, _ := newAllocators(t, Config{Ranges: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/29")}, DualStack: true})
	if err := a.SetRanges([]Range{{def, true}, {extra, true}}); err != nil {
		t.Fatal(err)
	}
	create := func(name string, mods ...func(*core.Service)) (*core.Service, error) {
		svc := newService(append([]func(*core.Service){named("ns", name)}, mods...)...)
		txn, err := a.AllocateCreate(ctx, svc, false)
		if err == nil {
			txn.Commit()
		}
		return svc, err
	}

	t.Run("a chosen address in the extra range", func(t *testing.T) {
		svc, err := create("chosen", clusterIPs("203.0.113.10"))
		if err != nil {
			t.Fatal(err)
		}
		if !extra.Has(netip.MustParseAddr("203.0.113.10")) || svc.Spec.ClusterIP != "203.0.113.10" {
			t.Errorf("203.0.113.10 not held by the extra range (clusterIP %s)", svc.Spec.ClusterIP)
		}
		if _, err := create("again", clusterIPs("203.0.113.10")); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "provided IP is already allocated") {
			t.Errorf("the same address again: %v", err)
		}
	})
	t.Run("a chosen address in no range names them all", func(t *testing.T) {
		_, err := create("outside", clusterIPs("198.51.100.7"))
		want := "spec.clusterIPs[0]: Invalid value: \"198.51.100.7\": failed to allocate IP 198.51.100.7: the provided IP (198.51.100.7) is not in the valid range. The range of valid IPs is 10.0.0.0/29, 203.0.113.0/24"
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want %q", err, want)
		}
	})
	t.Run("drawn addresses fill the default range first", func(t *testing.T) {
		for i := range 5 {
			svc, err := create("d" + string(rune('a'+i)))
			if err != nil {
				t.Fatal(err)
			}
			if ip := netip.MustParseAddr(svc.Spec.ClusterIP); !def.CIDR().Contains(ip) {
				t.Fatalf("draw %d gave %s while the default range had room", i, ip)
			}
		}
		svc, err := create("overflow")
		if err != nil {
			t.Fatal(err)
		}
		if ip := netip.MustParseAddr(svc.Spec.ClusterIP); !extra.CIDR().Contains(ip) {
			t.Errorf("with the default range full, got %s, want an address of %s", ip, extra.CIDR())
		}
	})
	t.Run("a range that is not ready takes back but gives nothing", func(t *testing.T) {
		if err := a.SetRanges([]Range{{def, true}, {extra, false}}); err != nil {
			t.Fatal(err)
		}
		if _, err := create("none-left"); err == nil || !strings.Contains(err.Error(), "range is full") {
			t.Errorf("with the default range full and the extra one not ready: %v, want a full range", err)
		}
		if _, err := create("chosen-not-ready", clusterIPs("203.0.113.20")); !apierrors.IsInvalid(err) {
			t.Errorf("a chosen address of a range that is not ready: %v, want a 422", err)
		}
		svc := newService(named("ns", "chosen"), clusterIPs("203.0.113.10"))
		if err := a.Release(ctx, svc); err != nil {
			t.Fatal(err)
		}
		if extra.Has(netip.MustParseAddr("203.0.113.10")) {
			t.Error("203.0.113.10 still held after its Service was deleted")
		}
	})
}
