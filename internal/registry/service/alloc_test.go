package service

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/apis/core"
	"github.com/duet-net/duet/internal/netaddr"
)

func TestConfig(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		families string
		wantErr  string
	}{
		{name: "IPv4 only", cfg: shapeByName(t, "IPv4"), families: "IPv4"},
		{name: "IPv6 only", cfg: shapeByName(t, "IPv6"), families: "IPv6"},
		{name: "IPv4 then IPv6", cfg: shapeByName(t, "IPv4,IPv6"), families: "IPv4,IPv6"},
		{name: "IPv6 then IPv4", cfg: shapeByName(t, "IPv6,IPv4"), families: "IPv6,IPv4"},
		{name: "the gate on with one range is single-stack", cfg: Config{Ranges: []netip.Prefix{v4Range}, DualStack: true}, families: "IPv4"},
		{name: "two ranges need the gate", cfg: Config{Ranges: []netip.Prefix{v4Range, v6Range}}, families: "IPv4",
			wantErr: "secondary service cluster-ip range(--service-cluster-ip-range[1]) can only be used if IPv6DualStack feature is enabled"},
		{name: "two ranges of one family", cfg: Config{Ranges: []netip.Prefix{v4Range, netip.MustParsePrefix("10.97.0.0/16")}, DualStack: true}, families: "IPv4,IPv4",
			wantErr: "--service-cluster-ip-range: 10.96.0.0/16 and 10.97.0.0/16 are both IPv4; a dual-stack cluster needs one range of each family"},
		{name: "no range", cfg: Config{}, families: "", wantErr: "--service-cluster-ip-range: want one or two ranges, got 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var fams []string
			for _, f := range tt.cfg.Families() {
				fams = append(fams, string(f))
			}
			if got := strings.Join(fams, ","); got != tt.families {
				t.Errorf("Families() = %s, want %s", got, tt.families)
			}
			err := tt.cfg.Validate()
			if got := fmt.Sprint(err); (tt.wantErr == "" && err != nil) || (tt.wantErr != "" && got != tt.wantErr) {
				t.Errorf("Validate() = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewAllocatorsChecksRanges(t *testing.T) {
	mk := func(cidr string, primary bool) *alloc.ServiceRange {
		r, err := alloc.NewServiceRange(netip.MustParsePrefix(cidr), alloc.ServiceRangeOptions{Primary: primary})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	dual := shapeByName(t, "IPv4,IPv6")
	tests := []struct {
		name    string
		cfg     Config
		ranges  map[netaddr.Family]*alloc.ServiceRange
		wantErr string
	}{
		{name: "one range per family", cfg: dual,
			ranges: map[netaddr.Family]*alloc.ServiceRange{netaddr.IPv4: mk("10.96.0.0/16", true), netaddr.IPv6: mk("fd00:96::/108", false)}},
		{name: "a family without its range", cfg: dual,
			ranges:  map[netaddr.Family]*alloc.ServiceRange{netaddr.IPv4: mk("10.96.0.0/16", true)},
			wantErr: "service IP allocators: the cluster serves IPv4, IPv6, got allocators for 1 families"},
		{name: "a range other than the configured one", cfg: dual,
			ranges:  map[netaddr.Family]*alloc.ServiceRange{netaddr.IPv4: mk("10.96.0.0/16", true), netaddr.IPv6: mk("fd00:97::/108", false)},
			wantErr: "service IP allocators: the IPv6 allocator serves fd00:97::/108, --service-cluster-ip-range says fd00:96::/108"},
		{name: "a primary range that does not reserve the kubernetes address", cfg: dual,
			ranges:  map[netaddr.Family]*alloc.ServiceRange{netaddr.IPv4: mk("10.96.0.0/16", false), netaddr.IPv6: mk("fd00:96::/108", false)},
			wantErr: "service IP allocators: the primary range 10.96.0.0/16 must reserve 10.96.0.1 for the kubernetes Service (create it as Primary)"},
		{name: "a second range with the gate off", cfg: shapeByName(t, "IPv4"),
			ranges:  map[netaddr.Family]*alloc.ServiceRange{netaddr.IPv4: mk("10.96.0.0/16", true), netaddr.IPv6: mk("fd00:96::/108", false)},
			wantErr: "service IP allocators: the cluster serves IPv4, got allocators for 2 families"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewAllocators(tt.cfg, tt.ranges)
			if got := fmt.Sprint(err); (tt.wantErr == "" && err != nil) || (tt.wantErr != "" && got != tt.wantErr) {
				t.Errorf("NewAllocators() = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestAllocateCreateChosenIPs covers addresses the client chose, for real
// and as a dry run, which must agree on every refusal.
func TestAllocateCreateChosenIPs(t *testing.T) {
	const prefix = `Service "web" is invalid: `
	tests := []struct {
		name    string
		shape   string
		ips     []string
		taken   []string // allocated by another Service first
		wantErr string
	}{
		{name: "an IPv4 address from the static band", shape: "IPv4", ips: []string{"10.96.0.10"}},
		{name: "an IPv6 address on an IPv6 cluster", shape: "IPv6", ips: []string{"fd00:96::10"}},
		{name: "the last IPv6 address", shape: "IPv6", ips: []string{"fd00:96::f:ffff"}},
		{name: "both families on a dual-stack cluster", shape: "IPv6,IPv4", ips: []string{"fd00:96::10", "10.96.0.10"}},
		{name: "an address another Service holds", shape: "IPv4", ips: []string{"10.96.0.10"}, taken: []string{"10.96.0.10"},
			wantErr: `spec.clusterIPs[0]: Invalid value: "10.96.0.10": failed to allocate IP 10.96.0.10: provided IP is already allocated`},
		{name: "an address outside the range", shape: "IPv4", ips: []string{"10.97.0.1"},
			wantErr: `spec.clusterIPs[0]: Invalid value: "10.97.0.1": failed to allocate IP 10.97.0.1: the provided IP (10.97.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/16`},
		{name: "the network address", shape: "IPv4", ips: []string{"10.96.0.0"},
			wantErr: `spec.clusterIPs[0]: Invalid value: "10.96.0.0": failed to allocate IP 10.96.0.0: the provided IP (10.96.0.0) is not in the valid range. The range of valid IPs is 10.96.0.0/16 (it is the network address)`},
		{name: "the IPv4 broadcast address", shape: "IPv4", ips: []string{"10.96.255.255"},
			wantErr: `spec.clusterIPs[0]: Invalid value: "10.96.255.255": failed to allocate IP 10.96.255.255: the provided IP (10.96.255.255) is not in the valid range. The range of valid IPs is 10.96.0.0/16 (it is the broadcast address)`},
		{name: "the IPv6 network address", shape: "IPv6", ips: []string{"fd00:96::"},
			wantErr: `spec.clusterIPs[0]: Invalid value: "fd00:96::": failed to allocate IP fd00:96::: the provided IP (fd00:96::) is not in the valid range. The range of valid IPs is fd00:96::/108 (it is the network address)`},
		{name: "the kubernetes Service's address", shape: "IPv4,IPv6", ips: []string{"10.96.0.1"},
			wantErr: `spec.clusterIPs[0]: Invalid value: "10.96.0.1": failed to allocate IP 10.96.0.1: the provided IP (10.96.0.1) is reserved for the kubernetes service`},
		{name: "the first address of the secondary range is anyone's", shape: "IPv6,IPv4", ips: []string{"10.96.0.1"}},
		{name: "a secondary address another Service holds", shape: "IPv4,IPv6", ips: []string{"10.96.0.10", "fd00:96::10"}, taken: []string{"fd00:96::10"},
			wantErr: `spec.clusterIPs[1]: Invalid value: "fd00:96::10": failed to allocate IP fd00:96::10: provided IP is already allocated`},
	}
	for _, tt := range tests {
		for _, dryRun := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/dryRun=%v", tt.name, dryRun), func(t *testing.T) {
				cfg := shapeByName(t, tt.shape)
				a, ranges := newAllocators(t, cfg)
				for _, ip := range tt.taken {
					other := newService(named("ns", "other"), clusterIP(ip))
					if _, err := a.AllocateCreate(ctx, other, false); err != nil {
						t.Fatal(err)
					}
				}
				before := used(ranges)
				mods := []func(*core.Service){clusterIPs(tt.ips...)}
				if len(tt.ips) == 2 {
					mods = append(mods, policy(require))
				}
				svc := newService(mods...)
				txn, err := a.AllocateCreate(ctx, svc, dryRun)
				if tt.wantErr != "" {
					if !apierrors.IsInvalid(err) || err.Error() != prefix+tt.wantErr {
						t.Fatalf("AllocateCreate error = %v, want a 422 %q", err, tt.wantErr)
					}
					if after := used(ranges); fmt.Sprint(after) != fmt.Sprint(before) {
						t.Errorf("a refused request changed the ranges: %v then %v", before, after)
					}
					return
				}
				if err != nil {
					t.Fatalf("AllocateCreate: %v", err)
				}
				txn.Commit()
				if fmt.Sprint(svc.Spec.ClusterIPs) != fmt.Sprint(tt.ips) || svc.Spec.ClusterIP != tt.ips[0] {
					t.Errorf("clusterIP %q clusterIPs %q, want %q", svc.Spec.ClusterIP, svc.Spec.ClusterIPs, tt.ips)
				}
				for i, s := range tt.ips {
					held := ranges[netaddr.Family(svc.Spec.IPFamilies[i])].Has(netip.MustParseAddr(s))
					if held == dryRun {
						t.Errorf("%s held = %v after a dryRun=%v create", s, held, dryRun)
					}
				}
			})
		}
	}
}

func TestAllocateCreateDrawsAddresses(t *testing.T) {
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			a, ranges := newAllocators(t, sh.cfg)
			svc := newService(policy(prefer))
			if _, err := a.AllocateCreate(ctx, svc, false); err != nil {
				t.Fatal(err)
			}
			checkAllocated(t, svc, ranges)
			// KEP-3070: drawn addresses come from above the static band,
			// which is 256 addresses in these ranges.
			for _, s := range svc.Spec.ClusterIPs {
				ip := netip.MustParseAddr(s)
				p := v4Range
				if ip.Is6() {
					p = v6Range
				}
				off, _ := netaddr.OffsetOf(p, ip)
				if off.Cmp64(256) <= 0 {
					t.Errorf("drew %s from the static band", ip)
				}
			}

			// A dry run draws nothing and reports each range's network
			// address, as Kubernetes does.
			before := used(ranges)
			dry := newService(named("ns", "dry"), policy(prefer))
			if _, err := a.AllocateCreate(ctx, dry, true); err != nil {
				t.Fatal(err)
			}
			for i, s := range dry.Spec.ClusterIPs {
				if want := sh.cfg.Ranges[i].Addr().String(); s != want {
					t.Errorf("dry-run clusterIPs[%d] = %s, want %s", i, s, want)
				}
			}
			if after := used(ranges); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("a dry run took addresses: %v then %v", before, after)
			}
		})
	}
}

func TestKubernetesService(t *testing.T) {
	tests := []struct {
		name  string
		shape string
		svc   *core.Service
		want  []string // "" for a drawn address
	}{
		{name: "default/kubernetes gets the first IPv4 address", shape: "IPv4",
			svc: newService(named("default", "kubernetes")), want: []string{"10.96.0.1"}},
		{name: "default/kubernetes gets the first IPv6 address", shape: "IPv6",
			svc: newService(named("default", "kubernetes")), want: []string{"fd00:96::1"}},
		{name: "default/kubernetes on a dual-stack cluster: the primary's first address and any secondary", shape: "IPv6,IPv4",
			svc: newService(named("default", "kubernetes"), policy(require)), want: []string{"fd00:96::1", ""}},
		{name: "default/kubernetes may name its address", shape: "IPv4,IPv6",
			svc: newService(named("default", "kubernetes"), clusterIP("10.96.0.1")), want: []string{"10.96.0.1"}},
		{name: "kubernetes in another namespace is an ordinary Service", shape: "IPv4",
			svc: newService(named("ns", "kubernetes")), want: []string{""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := shapeByName(t, tt.shape)
			a, ranges := newAllocators(t, cfg)
			svc := tt.svc.DeepCopy()
			if _, err := a.AllocateCreate(ctx, svc, false); err != nil {
				t.Fatal(err)
			}
			if len(svc.Spec.ClusterIPs) != len(tt.want) {
				t.Fatalf("clusterIPs %q, want %q", svc.Spec.ClusterIPs, tt.want)
			}
			for i, w := range tt.want {
				got := svc.Spec.ClusterIPs[i]
				if w != "" && got != w {
					t.Errorf("clusterIPs[%d] = %s, want %s", i, got, w)
				}
				if w == "" && got == ranges[netaddr.Family(svc.Spec.IPFamilies[i])].KubernetesServiceIP().String() && i == 0 {
					t.Errorf("clusterIPs[%d] = %s, the kubernetes Service's address", i, got)
				}
			}
			// Deleting it keeps the address reserved for the next one.
			if err := a.Release(ctx, svc); err != nil {
				t.Fatal(err)
			}
			p := ranges[cfg.Primary()]
			if !p.Has(p.KubernetesServiceIP()) {
				t.Errorf("%s is no longer reserved after the kubernetes Service was deleted", p.KubernetesServiceIP())
			}
		})
	}
}

// TestAllocateCreateIsAllOrNothing checks that a failure on the second
// family gives back the first.
func TestAllocateCreateIsAllOrNothing(t *testing.T) {
	small := netip.MustParsePrefix("fd00:1::/125") // 7 usable addresses
	tests := []struct {
		name    string
		cfg     Config
		hold    string // held in the secondary range beforehand
		fill    bool   // the secondary range is full beforehand
		svc     *core.Service
		wantErr string
	}{
		{name: "the chosen secondary is taken: the chosen primary is released",
			cfg: shapeByName(t, "IPv4,IPv6"), hold: "fd00:96::1", svc: newService(policy(require), clusterIPs("10.96.0.10", "fd00:96::1")),
			wantErr: `Service "web" is invalid: spec.clusterIPs[1]: Invalid value: "fd00:96::1": failed to allocate IP fd00:96::1: provided IP is already allocated`},
		{name: "the secondary range is full: the drawn primary is released",
			cfg: Config{Ranges: []netip.Prefix{v4Range, small}, DualStack: true}, fill: true, svc: newService(policy(require)),
			wantErr: "Internal error occurred: failed to allocate a serviceIP: range is full: all 7 usable addresses of fd00:1::/125 are allocated"},
		{name: "the chosen secondary is outside the range: the chosen primary is released",
			cfg: shapeByName(t, "IPv6,IPv4"), svc: newService(policy(require), clusterIPs("fd00:96::10", "10.0.0.1")),
			wantErr: `Service "web" is invalid: spec.clusterIPs[1]: Invalid value: "10.0.0.1": failed to allocate IP 10.0.0.1: the provided IP (10.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/16`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, ranges := newAllocators(t, tt.cfg)
			secondary := ranges[tt.cfg.Families()[1]]
			if tt.hold != "" {
				if err := secondary.Allocate(ctx, netip.MustParseAddr(tt.hold)); err != nil {
					t.Fatal(err)
				}
			}
			for tt.fill {
				if _, err := secondary.AllocateNext(ctx); err != nil {
					break
				}
			}
			before := used(ranges)
			svc := tt.svc.DeepCopy()
			txn, err := a.AllocateCreate(ctx, svc, false)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("AllocateCreate error = %v, want %q", err, tt.wantErr)
			}
			if txn != nil {
				t.Error("a failed AllocateCreate returned a transaction")
			}
			if after := used(ranges); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("a failed create left addresses taken: %v then %v", before, after)
			}
			if fmt.Sprint(svc.Spec.ClusterIPs) != fmt.Sprint(tt.svc.Spec.ClusterIPs) {
				t.Errorf("a failed create changed clusterIPs from %q to %q", tt.svc.Spec.ClusterIPs, svc.Spec.ClusterIPs)
			}
		})
	}
}

func TestAllocateCreateRefusesInvalidFamilies(t *testing.T) {
	a, ranges := newAllocators(t, shapeByName(t, "IPv4"))
	before := used(ranges)
	svc := newService(policy(require))
	_, err := a.AllocateCreate(ctx, svc, false)
	if !apierrors.IsInvalid(err) || err.Error() != `Service "web" is invalid: `+notDualStack {
		t.Fatalf("AllocateCreate error = %v, want a 422 %q", err, notDualStack)
	}
	if after := used(ranges); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("refused request took addresses: %v then %v", before, after)
	}
}

func TestTxn(t *testing.T) {
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			a, ranges := newAllocators(t, sh.cfg)
			before := used(ranges)
			svc := newService(policy(prefer))
			txn, err := a.AllocateCreate(ctx, svc, false)
			if err != nil {
				t.Fatal(err)
			}
			// The Service could not be stored.
			txn.Revert()
			if after := used(ranges); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("Revert left addresses taken: %v then %v", before, after)
			}
			txn.Commit() // settled already: no effect

			svc = newService(policy(prefer))
			txn, err = a.AllocateCreate(ctx, svc, false)
			if err != nil {
				t.Fatal(err)
			}
			txn.Commit()
			txn.Revert() // settled already: no effect
			checkAllocated(t, svc, ranges)

			// Deleting it gives everything back.
			if err := a.Release(ctx, svc); err != nil {
				t.Fatal(err)
			}
			if after := used(ranges); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("Release left addresses taken: %v then %v", before, after)
			}
		})
	}
}

// A write that failed because its request ended may have been stored all
// the same (etcd committed it after the server stopped waiting): Revert
// then waits until the write has settled, and keeps what the stored
// Service holds. A write that failed for any other reason gives everything
// back at once.
func TestRevertKeepsWhatWasStored(t *testing.T) {
	notFound := apierrors.NewNotFound(corev1.Resource("services"), "web")
	for _, tc := range []struct {
		name string
		// requestEnded: the request's context is done when Revert runs.
		requestEnded bool
		// stored answers the read of the Service, given what the
		// allocation produced; nil: it must not be read.
		stored func(allocated *core.Service) (*core.Service, error)
		kept   bool
	}{
		{"refused write, request still running", false, nil, false},
		{"request ended, not stored", true, func(*core.Service) (*core.Service, error) { return nil, notFound }, false},
		{"request ended, stored after all", true, func(s *core.Service) (*core.Service, error) { return s.DeepCopy(), nil }, true},
		{"request ended, another object of that name stored", true, func(s *core.Service) (*core.Service, error) {
			o := s.DeepCopy()
			o.UID = "someone-else"
			return o, nil
		}, false},
		{"request ended, stored without these addresses", true, func(s *core.Service) (*core.Service, error) {
			o := s.DeepCopy()
			o.Spec.ClusterIPs, o.Spec.ClusterIP = nil, ""
			return o, nil
		}, false},
		{"request ended, cannot tell", true, func(*core.Service) (*core.Service, error) { return nil, errors.New("etcd unreachable") }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, ranges := newAllocators(t, shapeByName(t, v4v6))
			settled := false
			a.settleLater = func(f func()) { settled = true; f() }
			before := used(ranges)
			svc := newService(policy(prefer))
			svc.UID = "web-uid"
			a.SetStoredReader(func(_ context.Context, ns, name string) (*core.Service, error) {
				if tc.stored == nil {
					t.Errorf("the stored Service was read after a write that surely failed")
					return nil, notFound
				}
				if ns != svc.Namespace || name != svc.Name {
					t.Errorf("read %s/%s, want %s/%s", ns, name, svc.Namespace, svc.Name)
				}
				return tc.stored(svc)
			})
			reqCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			txn, err := a.AllocateCreate(reqCtx, svc, false)
			if err != nil {
				t.Fatal(err)
			}
			if tc.requestEnded {
				cancel()
			}
			txn.Revert()
			if settled != tc.requestEnded {
				t.Errorf("waited for the write to settle: %v, want %v", settled, tc.requestEnded)
			}
			if tc.kept {
				checkAllocated(t, svc, ranges)
			} else if after := used(ranges); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("Revert kept addresses of a Service that was not stored: %v then %v", before, after)
			}
		})
	}

	// An upgrade whose update was stored although its request ended keeps
	// its new secondary IP.
	a, ranges := newAllocators(t, shapeByName(t, v4v6))
	a.settleLater = func(f func()) { f() }
	old := newService()
	old.UID = "web-uid"
	txn, err := a.AllocateCreate(ctx, old, false)
	if err != nil {
		t.Fatal(err)
	}
	txn.Commit()
	up := old.DeepCopy()
	up.UID = "" // a client's update need not carry it
	policy(prefer)(up)
	var stored *core.Service
	a.SetStoredReader(func(context.Context, string, string) (*core.Service, error) { return stored, nil })
	reqCtx, cancel := context.WithCancel(ctx)
	txn, err = a.AllocateUpdate(reqCtx, up, old, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(up.Spec.ClusterIPs) != 2 {
		t.Fatalf("upgrade gave clusterIPs %v, want two", up.Spec.ClusterIPs)
	}
	stored = up.DeepCopy()
	stored.UID = old.UID
	cancel()
	txn.Revert()
	checkAllocated(t, up, ranges)
}

func TestRelease(t *testing.T) {
	tests := []struct {
		name  string
		shape string
		svc   *core.Service
	}{
		{name: "a dual-stack Service", shape: "IPv6,IPv4", svc: newService(policy(require))},
		{name: "a headless Service has nothing to release", shape: "IPv4,IPv6", svc: newService(headless, noSelector)},
		{name: "an ExternalName Service has nothing to release", shape: "IPv4", svc: newService(externalName)},
		{name: "a Service of a family the cluster no longer serves", shape: "IPv4",
			svc: newService(func(s *core.Service) {
				s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.10", []string{"10.96.0.10", "fd00:96::10"}
				s.Spec.IPFamilies = []corev1.IPFamily{v4, v6}
			})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, ranges := newAllocators(t, shapeByName(t, tt.shape))
			before := used(ranges)
			svc := tt.svc.DeepCopy()
			if len(svc.Spec.IPFamilies) == 0 {
				if _, err := a.AllocateCreate(ctx, svc, false); err != nil {
					t.Fatal(err)
				}
			} else if err := ranges[netaddr.IPv4].Allocate(ctx, netip.MustParseAddr("10.96.0.10")); err != nil {
				t.Fatal(err)
			}
			if err := a.Release(ctx, svc); err != nil {
				t.Fatalf("Release: %v", err)
			}
			if after := used(ranges); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("Release left addresses taken: %v then %v", before, after)
			}
		})
	}
}

// ownerStore records the owner each record was made for.
type ownerStore struct {
	*alloc.MemStore
	mu     sync.Mutex
	owners map[netip.Prefix]alloc.Owner
	fail   netip.Prefix // Create of this key fails
}

func (s *ownerStore) Create(ctx context.Context, key netip.Prefix) error {
	if key == s.fail {
		return errors.New("etcd is unavailable")
	}
	o, _ := alloc.OwnerFrom(ctx)
	s.mu.Lock()
	s.owners[key] = o
	s.mu.Unlock()
	return s.MemStore.Create(ctx, key)
}

func TestAllocationsRecordTheirOwner(t *testing.T) {
	store := &ownerStore{MemStore: alloc.NewMemStore(), owners: map[netip.Prefix]alloc.Owner{}}
	a, _ := newAllocatorsWithStore(t, shapeByName(t, "IPv4,IPv6"), store)
	svc := newService(named("shop", "cart"), policy(require), func(s *core.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.10", []string{"10.96.0.10"}
	})
	txn, err := a.AllocateCreate(ctx, svc, false)
	if err != nil {
		t.Fatal(err)
	}
	txn.Commit()
	want := alloc.Owner{Group: "", Resource: "services", Namespace: "shop", Name: "cart"}
	for _, s := range svc.Spec.ClusterIPs {
		ip := netip.MustParseAddr(s)
		if got := store.owners[netip.PrefixFrom(ip, ip.BitLen())]; got != want {
			t.Errorf("%s recorded for %+v, want %+v", ip, got, want)
		}
	}
	if err := a.Release(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if store.Len() != 0 {
		t.Errorf("%d records left after Release", store.Len())
	}
}

func TestStoreFailureIsInternalAndReleasesTheFirstFamily(t *testing.T) {
	store := &ownerStore{MemStore: alloc.NewMemStore(), owners: map[netip.Prefix]alloc.Owner{},
		fail: netip.MustParsePrefix("fd00:96::10/128")}
	a, ranges := newAllocatorsWithStore(t, shapeByName(t, "IPv4,IPv6"), store)
	svc := newService(policy(require), clusterIPs("10.96.0.10", "fd00:96::10"))
	_, err := a.AllocateCreate(ctx, svc, false)
	if !apierrors.IsInternalError(err) || !strings.Contains(err.Error(), "failed to allocate IP fd00:96::10: etcd is unavailable") {
		t.Fatalf("AllocateCreate error = %v, want an internal error naming the store failure", err)
	}
	if ranges[netaddr.IPv4].Has(netip.MustParseAddr("10.96.0.10")) || store.Len() != 0 {
		t.Errorf("the IPv4 address is still held after the IPv6 one failed (%d records)", store.Len())
	}
}

// TestConcurrentCreatesNeverShareAnAddress runs creates in parallel, as
// concurrent requests do, on a small range.
func TestConcurrentCreatesNeverShareAnAddress(t *testing.T) {
	cfg := Config{Ranges: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/26"), netip.MustParsePrefix("fd00::/122")}, DualStack: true}
	a, _ := newAllocators(t, cfg)
	const n = 40
	svcs := make([]*core.Service, n)
	var wg sync.WaitGroup
	for i := range n {
		svcs[i] = newService(named("ns", fmt.Sprintf("s%d", i)), policy(require))
		wg.Add(1)
		go func() {
			defer wg.Done()
			txn, err := a.AllocateCreate(ctx, svcs[i], false)
			if err != nil {
				t.Error(err)
				return
			}
			txn.Commit()
		}()
	}
	wg.Wait()
	owner := map[string]string{}
	for _, s := range svcs {
		for _, ip := range s.Spec.ClusterIPs {
			if prev, dup := owner[ip]; dup {
				t.Errorf("%s given to both %s and %s", ip, prev, s.Name)
			}
			owner[ip] = s.Name
		}
	}
}
