package service

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/apis/core"
	"github.com/duet-net/duet/internal/netaddr"
)

// reconfigure returns Allocators for cfg that keep the ranges of families
// the cluster still serves: a cluster restarted with a changed
// --service-cluster-ip-range.
func reconfigure(t *testing.T, cfg Config, ranges map[netaddr.Family]*alloc.ServiceRange) (*Allocators, map[netaddr.Family]*alloc.ServiceRange) {
	t.Helper()
	out := map[netaddr.Family]*alloc.ServiceRange{}
	for i, fam := range cfg.Families() {
		if r := ranges[fam]; r != nil && r.CIDR() == cfg.Ranges[i] {
			out[fam] = r
			continue
		}
		r, err := alloc.NewServiceRange(cfg.Ranges[i], alloc.ServiceRangeOptions{Primary: i == 0})
		if err != nil {
			t.Fatal(err)
		}
		out[fam] = r
	}
	a, err := NewAllocators(cfg, out)
	if err != nil {
		t.Fatal(err)
	}
	return a, out
}

func held(ranges map[netaddr.Family]*alloc.ServiceRange, ip string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	r := ranges[netaddr.FamilyOf(a)]
	return r != nil && r.Has(a)
}

func relabel(s *core.Service) { s.Labels = map[string]string{"tier": "front"} }

// asOldClient makes the request a 1.16 client sends after reading the
// Service: it has clusterIP and ipFamily, and none of the GA fields.
func asOldClient(s *core.Service) {
	s.Spec.ClusterIPs, s.Spec.IPFamilies, s.Spec.IPFamilyPolicy = nil, nil, nil
}

func toExternalName(s *core.Service) {
	s.Spec.Type = corev1.ServiceTypeExternalName
	s.Spec.ExternalName = "db.example.com"
}

func toClusterIP(s *core.Service) {
	s.Spec.Type = corev1.ServiceTypeClusterIP
	s.Spec.ExternalName = ""
}

func then(mods ...func(*core.Service)) func(*core.Service) {
	return func(s *core.Service) {
		for _, m := range mods {
			m(s)
		}
	}
}

// TestUpdate runs updates through SetDefaults, PrepareForUpdate,
// ValidateUpdate and AllocateUpdate, then settles the transaction both
// ways: Commit (the update was stored) and Revert (it was not).
func TestUpdate(t *testing.T) {
	dual := []string{"IPv4,IPv6", "IPv6,IPv4"}
	tests := []struct {
		name     string
		shapes   []string
		after    string // the cluster's shape at update time, if it changed
		old      *core.Service
		hold     string              // an address another Service holds
		update   func(*core.Service) // applied to the stored object, as read-modify-write
		manifest *core.Service       // sent instead of the stored object, when set
		dryRun   bool

		same     bool // the family fields and addresses stay as they were
		policy   corev1.IPFamilyPolicy
		families string   // "primary", "primary,other" or literal
		ips      []string // "=" keeps the old address at that index, "*" any address, "None"
		errs     []string // from ValidateUpdate
		allocErr string   // from AllocateUpdate
	}{
		// Re-apply and old clients.
		{name: "re-applying the manifest without clusterIP keeps the addresses",
			shapes: []string{"IPv4", "IPv6", "IPv4,IPv6", "IPv6,IPv4"},
			old:    newService(policy(prefer)), manifest: newService(policy(prefer)), same: true},
		{name: "re-applying a manifest without a policy keeps a dual-stack Service dual",
			shapes: dual, old: newService(policy(require)), manifest: newService(), same: true},
		{name: "a 1.16 client's read-modify-write keeps a dual-stack Service dual",
			shapes: dual, old: newService(policy(require)), update: then(asOldClient, relabel), same: true},
		{name: "a dual-stack Service made with ipFamily and RequireDualStack, read and written back, is accepted",
			shapes: dual, old: newService(ipFamily(v6), policy(require)), update: relabel, same: true},
		{name: "a GA client that omits ipFamily keeps it",
			shapes: dual, old: newService(policy(require)), update: func(s *core.Service) { s.Spec.IPFamily = nil }, same: true},

		// Upgrade.
		{name: "SingleStack to PreferDualStack adds the other family",
			shapes: dual, old: newService(), update: policy(prefer),
			policy: prefer, families: "primary,other", ips: []string{"=", "*"}},
		{name: "SingleStack to PreferDualStack on a single-stack cluster changes nothing else",
			shapes: []string{"IPv4", "IPv6"}, old: newService(), update: policy(prefer),
			policy: prefer, families: "primary", ips: []string{"="}},
		{name: "SingleStack to RequireDualStack on a single-stack cluster is refused",
			shapes: []string{"IPv4", "IPv6"}, old: newService(), update: policy(require), errs: []string{notDualStack}},
		{name: "an upgrade may choose the secondary address",
			shapes: []string{"IPv4,IPv6"}, old: newService(clusterIPs(v4IP)),
			update: then(policy(require), func(s *core.Service) { s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, "fd00:96::20") }),
			policy: require, families: v4v6, ips: []string{v4IP, "fd00:96::20"}},
		{name: "an upgrade to a secondary address another Service holds changes nothing",
			shapes: []string{"IPv4,IPv6"}, old: newService(clusterIPs(v4IP)), hold: "fd00:96::20",
			update:   then(policy(require), func(s *core.Service) { s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, "fd00:96::20") }),
			allocErr: `Service "web" is invalid: spec.clusterIPs[1]: Invalid value: "fd00:96::20": failed to allocate IP fd00:96::20: provided IP is already allocated`},
		{name: "a dry-run upgrade takes nothing",
			shapes: []string{"IPv4,IPv6"}, old: newService(), update: policy(require), dryRun: true,
			policy: require, families: v4v6, ips: []string{"=", "fd00:96::"}},
		{name: "upgrading a headless Service adds a family and no address",
			shapes: dual, old: newService(headless), update: policy(prefer),
			policy: prefer, families: "primary,other", ips: []string{"None"}},

		// Downgrade.
		{name: "RequireDualStack to SingleStack releases the secondary",
			shapes: dual, old: newService(policy(require)), update: policy(single),
			policy: single, families: "primary", ips: []string{"="}},
		{name: "dropping the secondary without SingleStack is refused",
			shapes: dual, old: newService(policy(require)),
			update: func(s *core.Service) {
				s.Spec.ClusterIPs, s.Spec.IPFamilies = s.Spec.ClusterIPs[:1], s.Spec.IPFamilies[:1]
			},
			errs: []string{
				`spec.ipFamilyPolicy: Invalid value: "RequireDualStack": must be 'SingleStack' to release the secondary cluster IP`,
				`spec.ipFamilyPolicy: Invalid value: "RequireDualStack": must be 'SingleStack' to release the secondary IP family`,
			}},
		{name: "a dry-run downgrade releases nothing",
			shapes: dual, old: newService(policy(require)), update: policy(single), dryRun: true,
			policy: single, families: "primary", ips: []string{"="}},

		// What may not change.
		{name: "the primary clusterIP may not change",
			shapes: []string{"IPv4"}, old: newService(clusterIPs(v4IP)), update: clusterIPs("10.96.0.11"),
			errs: []string{`spec.clusterIPs[0]: Invalid value: ["10.96.0.11"]: may not change once set`}},
		{name: "the primary clusterIP may not change through clusterIP alone",
			shapes: []string{"IPv4,IPv6"}, old: newService(clusterIPs(v4IP)), update: clusterIP("10.96.0.11"),
			errs: []string{`spec.clusterIPs[0]: Invalid value: ["10.96.0.11"]: may not change once set`}},
		{name: "the primary family may not change",
			shapes: []string{"IPv4,IPv6"}, old: newService(clusterIPs(v4IP)), update: families(v6),
			errs: []string{
				"spec.clusterIPs[0]: Invalid value: \"10.96.0.10\": expected an IPv6 value as indicated by `ipFamilies[0]`",
				`spec.ipFamilies[0]: Invalid value: ["IPv6"]: may not change once set`,
			}},
		{name: "the 1.16 ipFamily may not change",
			shapes: dual, old: newService(clusterIPs(v4IP)), update: then(asOldClient, ipFamily(v6)),
			errs: []string{`spec.ipFamily: Invalid value: "IPv6": field is immutable`}},
		{name: "the 1.16 ipFamily may be chosen when leaving ExternalName",
			shapes: dual, old: newService(externalName), update: then(toClusterIP, ipFamily(v6)),
			policy: single, families: "IPv6", ips: []string{"*"}},
		{name: "a headless Service may change its family",
			shapes: []string{"IPv4,IPv6"}, old: newService(headless), update: families(v6),
			policy: single, families: "IPv6", ips: []string{"None"}},

		// Type changes.
		{name: "ClusterIP to ExternalName releases every address",
			shapes: dual, old: newService(policy(require)), update: toExternalName,
			policy: "", families: "", ips: nil},
		{name: "ExternalName to ClusterIP allocates",
			shapes: []string{"IPv4", "IPv6", "IPv4,IPv6", "IPv6,IPv4"}, old: newService(externalName), update: toClusterIP,
			policy: single, families: "primary", ips: []string{"*"}},
		{name: "ExternalName to a dual-stack ClusterIP allocates both",
			shapes: dual, old: newService(externalName), update: then(toClusterIP, policy(require)),
			policy: require, families: "primary,other", ips: []string{"*", "*"}},
		{name: "headless to ExternalName releases nothing",
			shapes: dual, old: newService(headless, noSelector), update: toExternalName,
			policy: "", families: "", ips: nil},
		{name: "ClusterIP to NodePort keeps the addresses",
			shapes: dual, old: newService(policy(require)), update: typ(corev1.ServiceTypeNodePort), same: true},
		{name: "LoadBalancer to ClusterIP drops the load-balancer fields",
			shapes: []string{"IPv4"}, old: newService(typ(corev1.ServiceTypeLoadBalancer)), update: typ(corev1.ServiceTypeClusterIP), same: true},

		// The cluster changed.
		{name: "a PreferDualStack Service stays single-family when the cluster becomes dual-stack",
			shapes: []string{"IPv4"}, after: "IPv4,IPv6", old: newService(policy(prefer)), update: relabel,
			policy: prefer, families: "IPv4", ips: []string{"="}},
		{name: "it becomes dual-stack when RequireDualStack is asked",
			shapes: []string{"IPv4"}, after: "IPv4,IPv6", old: newService(policy(prefer)), update: policy(require),
			policy: require, families: v4v6, ips: []string{"=", "*"}},
		{name: "a dual-stack Service on a cluster that lost its secondary family cannot be updated",
			shapes: []string{"IPv4,IPv6"}, after: "IPv4", old: newService(policy(require)), update: relabel,
			errs: []string{notDualStack, `spec.ipFamilies[1]: Invalid value: "IPv6": not configured on this cluster`}},
	}
	for _, tt := range tests {
		for _, shapeName := range tt.shapes {
			for _, commit := range []bool{true, false} {
				if (len(tt.errs) > 0 || tt.allocErr != "") && !commit {
					continue
				}
				settle := "Commit"
				if !commit {
					settle = "Revert"
				}
				t.Run(fmt.Sprintf("%s/%s/%s", tt.name, shapeName, settle), func(t *testing.T) {
					cfg := shapeByName(t, shapeName)
					a, ranges := newAllocators(t, cfg)
					old := tt.old.DeepCopy()
					txn, err := a.AllocateCreate(ctx, old, false)
					if err != nil {
						t.Fatalf("creating the stored Service: %v", err)
					}
					txn.Commit()
					old.ResourceVersion = "1"
					if errs := ValidateCreate(old, cfg); len(errs) != 0 {
						t.Fatalf("the stored Service is invalid: %v", errs)
					}
					if tt.after != "" {
						cfg = shapeByName(t, tt.after)
						a, ranges = reconfigure(t, cfg, ranges)
					}
					if tt.hold != "" {
						if err := ranges[netaddr.FamilyOf(netip.MustParseAddr(tt.hold))].Allocate(ctx, netip.MustParseAddr(tt.hold)); err != nil {
							t.Fatal(err)
						}
					}

					var svc *core.Service
					if tt.manifest != nil {
						// The API server fills in the version of an
						// unconditional update.
						svc = tt.manifest.DeepCopy()
						svc.ResourceVersion = old.ResourceVersion
					} else {
						svc = old.DeepCopy()
						tt.update(svc)
					}
					SetDefaults(svc)
					PrepareForUpdate(svc, old, cfg)
					checkErrs(t, ValidateUpdate(svc, old, cfg), tt.errs)

					before := used(ranges)
					txn, err = a.AllocateUpdate(ctx, svc, old, tt.dryRun)
					if len(tt.errs) > 0 || tt.allocErr != "" {
						if !apierrors.IsInvalid(err) || (tt.allocErr != "" && err.Error() != tt.allocErr) {
							t.Errorf("AllocateUpdate error = %v, want a 422 %q", err, tt.allocErr)
						}
						if after := used(ranges); fmt.Sprint(after) != fmt.Sprint(before) {
							t.Errorf("a refused update changed the ranges: %v then %v", before, after)
						}
						for _, ip := range old.Spec.ClusterIPs {
							if ip != corev1.ClusterIPNone && cfg.Has(familyOfIP(ip)) && !held(ranges, ip) {
								t.Errorf("a refused update released %s", ip)
							}
						}
						return
					}
					if err != nil {
						t.Fatalf("AllocateUpdate: %v", err)
					}

					// The result.
					primary, other := string(cfg.Primary()), string(otherFamily(cfg.primaryFamily()))
					wantPolicy, wantFams, wantIPs := string(tt.policy), tt.families, tt.ips
					switch wantFams {
					case "primary":
						wantFams = primary
					case "primary,other":
						wantFams = primary + "," + other
					}
					if tt.same {
						wantPolicy, wantFams = policyString(old), famString(old.Spec.IPFamilies)
						wantIPs = make([]string, len(old.Spec.ClusterIPs))
						for i := range wantIPs {
							wantIPs[i] = "="
						}
					}
					if got := policyString(svc); got != wantPolicy {
						t.Errorf("ipFamilyPolicy = %q, want %q", got, wantPolicy)
					}
					if got := famString(svc.Spec.IPFamilies); got != wantFams {
						t.Errorf("ipFamilies = %q, want %q", got, wantFams)
					}
					checkLegacyIPFamily(t, svc)
					if len(svc.Spec.ClusterIPs) != len(wantIPs) {
						t.Fatalf("clusterIPs = %q, want %q", svc.Spec.ClusterIPs, wantIPs)
					}
					for i, w := range wantIPs {
						got := svc.Spec.ClusterIPs[i]
						switch w {
						case "=":
							if got != old.Spec.ClusterIPs[i] {
								t.Errorf("clusterIPs[%d] = %s, want the stored %s", i, got, old.Spec.ClusterIPs[i])
							}
						case "*":
						default:
							if got != w {
								t.Errorf("clusterIPs[%d] = %s, want %s", i, got, w)
							}
						}
					}
					if len(wantIPs) > 0 && svc.Spec.ClusterIP != svc.Spec.ClusterIPs[0] {
						t.Errorf("clusterIP %q, clusterIPs %q", svc.Spec.ClusterIP, svc.Spec.ClusterIPs)
					}
					if tt.name == "LoadBalancer to ClusterIP drops the load-balancer fields" &&
						(svc.Spec.AllocateLoadBalancerNodePorts != nil || svc.Spec.ExternalTrafficPolicy != "") {
						t.Errorf("load-balancer fields kept: %+v", svc.Spec)
					}
					// Kubernetes validates after allocating.
					checkErrs(t, ValidateUpdate(svc, old, cfg), nil)

					if commit {
						txn.Commit()
					} else {
						txn.Revert()
					}
					txn.Commit() // settled already: no effect

					// Who holds what.
					switch {
					case tt.dryRun:
						if after := used(ranges); fmt.Sprint(after) != fmt.Sprint(before) {
							t.Errorf("a dry run changed the ranges: %v then %v", before, after)
						}
					case commit:
						for _, ip := range svc.Spec.ClusterIPs {
							if ip != corev1.ClusterIPNone && !held(ranges, ip) {
								t.Errorf("%s is not held after Commit", ip)
							}
						}
						for _, ip := range old.Spec.ClusterIPs {
							if !slices.Contains(svc.Spec.ClusterIPs, ip) && held(ranges, ip) {
								t.Errorf("%s, given up by the update, is still held after Commit", ip)
							}
						}
					default:
						for _, ip := range old.Spec.ClusterIPs {
							if ip != corev1.ClusterIPNone && !held(ranges, ip) {
								t.Errorf("%s, stored, was released by Revert", ip)
							}
						}
						for _, ip := range svc.Spec.ClusterIPs {
							if !slices.Contains(old.Spec.ClusterIPs, ip) && held(ranges, ip) {
								t.Errorf("%s, allocated for the update, is still held after Revert", ip)
							}
						}
					}
				})
			}
		}
	}
}
