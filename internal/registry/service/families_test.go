package service

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/apis/core"
)

// outcome is what a create request becomes on one cluster shape: the
// settled policy and families, or the errors the client reads.
type outcome struct {
	policy   corev1.IPFamilyPolicy // "" for none
	families string                // "IPv4,IPv6"
	errs     []string
}

// all is the same outcome on every cluster shape.
func all(o outcome) map[string]outcome { return map[string]outcome{"*": o} }

func ok(p corev1.IPFamilyPolicy, fams string) outcome { return outcome{policy: p, families: fams} }

func fails(errs ...string) outcome { return outcome{errs: errs} }

const (
	v4IP = "10.96.0.10" // in the IPv4 range's static band
	v6IP = "fd00:96::10"

	notDualStack = `spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services`
)

// TestCreateFamilies runs create requests of both API generations through
// SetDefaults, PrepareForCreate, ValidateCreate and AllocateCreate on the
// four cluster shapes.
func TestCreateFamilies(t *testing.T) {
	tests := []struct {
		name string
		svc  *core.Service
		want map[string]outcome // by cluster shape, "*" for all
	}{
		// GA fields: policy and families.
		{
			name: "no policy and no families: SingleStack of the primary family",
			svc:  newService(),
			want: map[string]outcome{
				"IPv4": ok(single, "IPv4"), "IPv6": ok(single, "IPv6"),
				"IPv4,IPv6": ok(single, "IPv4"), "IPv6,IPv4": ok(single, "IPv6"),
			},
		},
		{
			name: "SingleStack: the primary family",
			svc:  newService(policy(single)),
			want: map[string]outcome{
				"IPv4": ok(single, "IPv4"), "IPv6": ok(single, "IPv6"),
				"IPv4,IPv6": ok(single, "IPv4"), "IPv6,IPv4": ok(single, "IPv6"),
			},
		},
		{
			name: "PreferDualStack: every family the cluster has, primary first",
			svc:  newService(policy(prefer)),
			want: map[string]outcome{
				"IPv4": ok(prefer, "IPv4"), "IPv6": ok(prefer, "IPv6"),
				"IPv4,IPv6": ok(prefer, v4v6), "IPv6,IPv4": ok(prefer, v6v4),
			},
		},
		{
			name: "RequireDualStack: both families, refused on a single-stack cluster",
			svc:  newService(policy(require)),
			want: map[string]outcome{
				"IPv4": fails(notDualStack), "IPv6": fails(notDualStack),
				"IPv4,IPv6": ok(require, v4v6), "IPv6,IPv4": ok(require, v6v4),
			},
		},
		{
			name: "SingleStack IPv6 asked by ipFamilies",
			svc:  newService(policy(single), families(v6)),
			want: map[string]outcome{
				"IPv4": fails(`spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster`),
				"IPv6": ok(single, "IPv6"), "IPv4,IPv6": ok(single, "IPv6"), "IPv6,IPv4": ok(single, "IPv6"),
			},
		},
		{
			name: "ipFamilies IPv6 without a policy is SingleStack",
			svc:  newService(families(v6)),
			want: map[string]outcome{
				"IPv4": fails(`spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster`),
				"IPv6": ok(single, "IPv6"), "IPv4,IPv6": ok(single, "IPv6"), "IPv6,IPv4": ok(single, "IPv6"),
			},
		},
		{
			name: "PreferDualStack with IPv6 first on an IPv4-primary cluster",
			svc:  newService(policy(prefer), families(v6)),
			want: map[string]outcome{
				"IPv4": fails(`spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster`),
				"IPv6": ok(prefer, "IPv6"), "IPv4,IPv6": ok(prefer, v6v4), "IPv6,IPv4": ok(prefer, v6v4),
			},
		},
		{
			name: "RequireDualStack IPv4 then IPv6, whatever the cluster's order",
			svc:  newService(policy(require), families(v4, v6)),
			want: map[string]outcome{
				"IPv4":      fails(notDualStack, `spec.ipFamilies[1]: Invalid value: "IPv6": not configured on this cluster`),
				"IPv6":      fails(notDualStack, `spec.ipFamilies[0]: Invalid value: "IPv4": not configured on this cluster`),
				"IPv4,IPv6": ok(require, v4v6), "IPv6,IPv4": ok(require, v4v6),
			},
		},
		{
			name: "SingleStack with two families",
			svc:  newService(policy(single), families(v4, v6)),
			want: all(fails(`spec.ipFamilyPolicy: Invalid value: "SingleStack": must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified`)),
		},
		{
			name: "two families without a policy: SingleStack cannot hold them",
			svc:  newService(families(v6, v4)),
			want: all(fails(`spec.ipFamilyPolicy: Invalid value: "SingleStack": must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified`)),
		},
		{
			name: "the same family twice",
			svc:  newService(policy(prefer), families(v4, v4)),
			want: all(fails(`spec.ipFamilies[1]: Duplicate value: "IPv4"`)),
		},
		{
			name: "an unknown family",
			svc:  newService(families("IPv5")),
			want: all(fails(`spec.ipFamilies[0]: Unsupported value: "IPv5": supported values: "IPv4", "IPv6"`)),
		},
		{
			name: "an unknown policy",
			svc:  newService(policy("DualStack")),
			want: all(fails(`spec.ipFamilyPolicy: Unsupported value: "DualStack": supported values: "PreferDualStack", "RequireDualStack", "SingleStack"`)),
		},

		// Cluster IPs the client chose.
		{
			name: "an IPv4 clusterIP from the static band",
			svc:  newService(clusterIPs(v4IP)),
			want: map[string]outcome{
				"IPv4":      ok(single, "IPv4"),
				"IPv6":      fails(`spec.clusterIPs[0]: Invalid value: ["10.96.0.10"]: IPv4 is not configured on this cluster`),
				"IPv4,IPv6": ok(single, "IPv4"), "IPv6,IPv4": ok(single, "IPv4"),
			},
		},
		{
			name: "an IPv6 clusterIP sent by a client that only knows clusterIP",
			svc:  newService(clusterIP(v6IP)),
			want: map[string]outcome{
				"IPv4": fails(`spec.clusterIPs[0]: Invalid value: ["fd00:96::10"]: IPv6 is not configured on this cluster`),
				"IPv6": ok(single, "IPv6"), "IPv4,IPv6": ok(single, "IPv6"), "IPv6,IPv4": ok(single, "IPv6"),
			},
		},
		{
			name: "an IPv4 clusterIP with PreferDualStack adds an IPv6 one",
			svc:  newService(clusterIPs(v4IP), policy(prefer)),
			want: map[string]outcome{
				"IPv4":      ok(prefer, "IPv4"),
				"IPv6":      fails(`spec.clusterIPs[0]: Invalid value: ["10.96.0.10"]: IPv4 is not configured on this cluster`),
				"IPv4,IPv6": ok(prefer, v4v6), "IPv6,IPv4": ok(prefer, v4v6),
			},
		},
		{
			name: "clusterIPs of both families with PreferDualStack",
			svc:  newService(clusterIPs(v4IP, v6IP), policy(prefer)),
			want: map[string]outcome{
				"IPv4":      fails(`spec.clusterIPs[1]: Invalid value: ["10.96.0.10","fd00:96::10"]: IPv6 is not configured on this cluster`),
				"IPv6":      fails(`spec.clusterIPs[0]: Invalid value: ["10.96.0.10","fd00:96::10"]: IPv4 is not configured on this cluster`),
				"IPv4,IPv6": ok(prefer, v4v6), "IPv6,IPv4": ok(prefer, v4v6),
			},
		},
		{
			name: "clusterIPs of both families without a policy",
			svc:  newService(clusterIPs(v6IP, v4IP)),
			want: map[string]outcome{
				"IPv4": fails(
					`spec.ipFamilyPolicy: Invalid value: "SingleStack": must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified`,
					`spec.clusterIPs[0]: Invalid value: ["fd00:96::10","10.96.0.10"]: IPv6 is not configured on this cluster`),
				"IPv6": fails(
					`spec.ipFamilyPolicy: Invalid value: "SingleStack": must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified`,
					`spec.clusterIPs[1]: Invalid value: ["fd00:96::10","10.96.0.10"]: IPv4 is not configured on this cluster`),
				"IPv4,IPv6": fails(`spec.ipFamilyPolicy: Invalid value: "SingleStack": must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified`),
				"IPv6,IPv4": fails(`spec.ipFamilyPolicy: Invalid value: "SingleStack": must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified`),
			},
		},
		{
			name: "clusterIPs in the other order than ipFamilies",
			svc:  newService(clusterIPs(v4IP, v6IP), families(v6, v4), policy(require)),
			want: all(fails(
				"spec.clusterIPs[0]: Invalid value: \"10.96.0.10\": expected an IPv6 value as indicated by `ipFamilies[0]`",
				"spec.clusterIPs[1]: Invalid value: \"fd00:96::10\": expected an IPv4 value as indicated by `ipFamilies[1]`")),
		},
		{
			name: "two IPv4 clusterIPs",
			svc:  newService(clusterIPs(v4IP, "10.96.0.11"), policy(prefer)),
			want: all(fails(`spec.clusterIPs: Invalid value: ["10.96.0.10","10.96.0.11"]: may specify no more than one IP for each IP family`)),
		},
		{
			name: "three clusterIPs",
			svc:  newService(clusterIPs(v4IP, v6IP, "10.96.0.11"), policy(prefer)),
			want: all(fails(`spec.clusterIPs: Invalid value: ["10.96.0.10","fd00:96::10","10.96.0.11"]: may only hold up to 2 values`)),
		},
		{
			name: "clusterIPs not starting with clusterIP",
			svc: newService(func(s *core.Service) {
				s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", []string{v4IP}
			}),
			want: all(fails("spec.clusterIPs: Invalid value: [\"10.96.0.10\"]: first value must match `clusterIP`")),
		},
		{
			name: "clusterIPs without clusterIP",
			svc:  newService(func(s *core.Service) { s.Spec.ClusterIPs = []string{v4IP} }),
			want: all(fails("spec.clusterIPs: Invalid value: [\"10.96.0.10\"]: must be empty when `clusterIP` is not specified")),
		},
		{
			name: "None followed by an address",
			svc:  newService(clusterIPs("None", v4IP)),
			want: all(fails(`spec.clusterIPs: Invalid value: ["None","10.96.0.10"]: 'None' must be the first and only value`)),
		},
		{
			name: "not an address",
			svc:  newService(clusterIPs("10.96.0.300")),
			want: all(fails(`spec.clusterIPs[0]: Invalid value: "10.96.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)`)),
		},
		{
			name: "an IPv6 address not in canonical form",
			svc:  newService(clusterIPs("fd00:96:0::10")),
			want: all(fails(`spec.clusterIPs[0]: Invalid value: "fd00:96:0::10": must be in canonical form ("fd00:96::10")`)),
		},

		// Headless Services.
		{
			name: "headless with a selector: SingleStack of the primary family",
			svc:  newService(headless),
			want: map[string]outcome{
				"IPv4": ok(single, "IPv4"), "IPv6": ok(single, "IPv6"),
				"IPv4,IPv6": ok(single, "IPv4"), "IPv6,IPv4": ok(single, "IPv6"),
			},
		},
		{
			name: "headless without selector: RequireDualStack with both families, even on a single-stack cluster",
			svc:  newService(headless, noSelector),
			want: map[string]outcome{
				"IPv4": ok(require, v4v6), "IPv6": ok(require, v6v4),
				"IPv4,IPv6": ok(require, v4v6), "IPv6,IPv4": ok(require, v6v4),
			},
		},
		{
			name: "headless without selector, SingleStack: the primary family",
			svc:  newService(headless, noSelector, policy(single)),
			want: map[string]outcome{
				"IPv4": ok(single, "IPv4"), "IPv6": ok(single, "IPv6"),
				"IPv4,IPv6": ok(single, "IPv4"), "IPv6,IPv4": ok(single, "IPv6"),
			},
		},
		{
			name: "headless without selector may put IPv6 first on any cluster",
			svc:  newService(headless, noSelector, families(v6)),
			want: all(ok(require, v6v4)),
		},
		{
			name: "headless with a selector may not require dual-stack on a single-stack cluster",
			svc:  newService(headless, policy(require)),
			want: map[string]outcome{
				"IPv4": fails(notDualStack), "IPv6": fails(notDualStack),
				"IPv4,IPv6": ok(require, v4v6), "IPv6,IPv4": ok(require, v6v4),
			},
		},

		// ExternalName Services.
		{
			name: "ExternalName: no policy, no families, no address",
			svc:  newService(externalName),
			want: all(ok("", "")),
		},
		{
			name: "ExternalName with a clusterIP",
			svc:  newService(externalName, clusterIP(v4IP)),
			want: all(fails(`spec.clusterIPs: Forbidden: may not be set for ExternalName services`)),
		},
		{
			name: "ExternalName with family fields",
			svc:  newService(externalName, policy(single), families(v4)),
			want: all(fails(
				`spec.ipFamilies: Forbidden: may not be set for ExternalName services`,
				`spec.ipFamilyPolicy: Forbidden: may not be set for ExternalName services`)),
		},

		// The 1.16 spec.ipFamily.
		{
			name: "1.16 ipFamily IPv6",
			svc:  newService(ipFamily(v6)),
			want: map[string]outcome{
				"IPv4": fails(`spec.ipFamily: Invalid value: "IPv6": only the following families are allowed: IPv4`),
				"IPv6": ok(single, "IPv6"), "IPv4,IPv6": ok(single, "IPv6"), "IPv6,IPv4": ok(single, "IPv6"),
			},
		},
		{
			name: "1.16 ipFamily IPv4",
			svc:  newService(ipFamily(v4)),
			want: map[string]outcome{
				"IPv4":      ok(single, "IPv4"),
				"IPv6":      fails(`spec.ipFamily: Invalid value: "IPv4": only the following families are allowed: IPv6`),
				"IPv4,IPv6": ok(single, "IPv4"), "IPv6,IPv4": ok(single, "IPv4"),
			},
		},
		{
			name: "1.16 ipFamily with a clusterIP of that family",
			svc:  newService(ipFamily(v6), clusterIP(v6IP)),
			want: map[string]outcome{
				"IPv4": fails(
					`spec.clusterIPs[0]: Invalid value: ["fd00:96::10"]: IPv6 is not configured on this cluster`,
					`spec.ipFamily: Invalid value: "IPv6": only the following families are allowed: IPv4`),
				"IPv6": ok(single, "IPv6"), "IPv4,IPv6": ok(single, "IPv6"), "IPv6,IPv4": ok(single, "IPv6"),
			},
		},
		{
			name: "1.16 ipFamily IPv4 with an IPv6 clusterIP",
			svc:  newService(ipFamily(v4), clusterIP(v6IP)),
			want: map[string]outcome{
				"IPv4": fails(
					`spec.clusterIPs[0]: Invalid value: ["fd00:96::10"]: IPv6 is not configured on this cluster`,
					`spec.ipFamily: Invalid value: "IPv4": does not match IPv6 cluster IP`),
				"IPv6":      fails(`spec.ipFamily: Invalid value: "IPv4": only the following families are allowed: IPv6`),
				"IPv4,IPv6": fails(`spec.ipFamily: Invalid value: "IPv4": does not match IPv6 cluster IP`),
				"IPv6,IPv4": fails(`spec.ipFamily: Invalid value: "IPv4": does not match IPv6 cluster IP`),
			},
		},
		{
			name: "1.16 ipFamily IPv6 with an IPv4 clusterIP",
			svc:  newService(ipFamily(v6), clusterIP(v4IP)),
			want: map[string]outcome{
				"IPv4": fails(`spec.ipFamily: Invalid value: "IPv6": only the following families are allowed: IPv4`),
				"IPv6": fails(
					`spec.clusterIPs[0]: Invalid value: ["10.96.0.10"]: IPv4 is not configured on this cluster`,
					`spec.ipFamily: Invalid value: "IPv6": does not match IPv4 cluster IP`),
				"IPv4,IPv6": fails(`spec.ipFamily: Invalid value: "IPv6": does not match IPv4 cluster IP`),
				"IPv6,IPv4": fails(`spec.ipFamily: Invalid value: "IPv6": does not match IPv4 cluster IP`),
			},
		},
		{
			name: "1.16 ipFamily disagreeing with ipFamilies",
			svc:  newService(ipFamily(v6), families(v4)),
			want: map[string]outcome{
				"IPv4": fails(`spec.ipFamily: Invalid value: "IPv6": only the following families are allowed: IPv4`),
				"IPv6": fails(
					`spec.ipFamilies[0]: Invalid value: "IPv4": not configured on this cluster`,
					"spec.ipFamily: Invalid value: \"IPv6\": does not match `ipFamilies[0]` (IPv4)"),
				"IPv4,IPv6": fails("spec.ipFamily: Invalid value: \"IPv6\": does not match `ipFamilies[0]` (IPv4)"),
				"IPv6,IPv4": fails("spec.ipFamily: Invalid value: \"IPv6\": does not match `ipFamilies[0]` (IPv4)"),
			},
		},
		{
			name: "1.16 ipFamily agreeing with ipFamilies",
			svc:  newService(ipFamily(v6), families(v6, v4), policy(prefer)),
			want: map[string]outcome{
				"IPv4": fails(
					`spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster`,
					`spec.ipFamily: Invalid value: "IPv6": only the following families are allowed: IPv4`),
				"IPv6":      fails(`spec.ipFamilies[1]: Invalid value: "IPv4": not configured on this cluster`),
				"IPv4,IPv6": ok(prefer, v6v4), "IPv6,IPv4": ok(prefer, v6v4),
			},
		},
		{
			name: "1.16 ipFamily of an unknown family",
			svc:  newService(ipFamily("IPv5")),
			want: map[string]outcome{
				"IPv4":      fails(`spec.ipFamily: Invalid value: "IPv5": only the following families are allowed: IPv4`),
				"IPv6":      fails(`spec.ipFamily: Invalid value: "IPv5": only the following families are allowed: IPv6`),
				"IPv4,IPv6": fails(`spec.ipFamily: Invalid value: "IPv5": only the following families are allowed: IPv4, IPv6`),
				"IPv6,IPv4": fails(`spec.ipFamily: Invalid value: "IPv5": only the following families are allowed: IPv6, IPv4`),
			},
		},
		{
			name: "1.16 ipFamily with PreferDualStack leads a dual-stack Service",
			svc:  newService(ipFamily(v6), policy(prefer)),
			want: map[string]outcome{
				"IPv4": fails(`spec.ipFamily: Invalid value: "IPv6": only the following families are allowed: IPv4`),
				"IPv6": ok(prefer, "IPv6"), "IPv4,IPv6": ok(prefer, v6v4), "IPv6,IPv4": ok(prefer, v6v4),
			},
		},
		// ipFamily is the primary family; an explicit policy decides single
		// or dual stack (see applyLegacyIPFamily for why).
		{
			name: "1.16 ipFamily IPv6 with RequireDualStack is a dual-stack Service with IPv6 first",
			svc:  newService(ipFamily(v6), policy(require)),
			want: map[string]outcome{
				"IPv4": fails(notDualStack, `spec.ipFamily: Invalid value: "IPv6": only the following families are allowed: IPv4`),
				"IPv6": fails(notDualStack), "IPv4,IPv6": ok(require, v6v4), "IPv6,IPv4": ok(require, v6v4),
			},
		},
		{
			name: "1.16 ipFamily IPv4 with RequireDualStack is a dual-stack Service with IPv4 first",
			svc:  newService(ipFamily(v4), policy(require)),
			want: map[string]outcome{
				"IPv4":      fails(notDualStack),
				"IPv6":      fails(notDualStack, `spec.ipFamily: Invalid value: "IPv4": only the following families are allowed: IPv6`),
				"IPv4,IPv6": ok(require, v4v6), "IPv6,IPv4": ok(require, v4v6),
			},
		},
		{
			name: "1.16 ipFamily with SingleStack is that family alone",
			svc:  newService(ipFamily(v6), policy(single)),
			want: map[string]outcome{
				"IPv4": fails(`spec.ipFamily: Invalid value: "IPv6": only the following families are allowed: IPv4`),
				"IPv6": ok(single, "IPv6"), "IPv4,IPv6": ok(single, "IPv6"), "IPv6,IPv4": ok(single, "IPv6"),
			},
		},
		{
			name: "1.16 ipFamily with RequireDualStack and ipFamilies led by the other family is refused",
			svc:  newService(ipFamily(v6), policy(require), families(v4, v6)),
			want: map[string]outcome{
				"IPv4": fails(notDualStack, `spec.ipFamilies[1]: Invalid value: "IPv6": not configured on this cluster`,
					`spec.ipFamily: Invalid value: "IPv6": only the following families are allowed: IPv4`),
				"IPv6": fails(notDualStack, `spec.ipFamilies[0]: Invalid value: "IPv4": not configured on this cluster`,
					"spec.ipFamily: Invalid value: \"IPv6\": does not match `ipFamilies[0]` (IPv4)"),
				"IPv4,IPv6": fails("spec.ipFamily: Invalid value: \"IPv6\": does not match `ipFamilies[0]` (IPv4)"),
				"IPv6,IPv4": fails("spec.ipFamily: Invalid value: \"IPv6\": does not match `ipFamilies[0]` (IPv4)"),
			},
		},
		{
			name: "1.16 ipFamily on a headless Service without selector keeps it single-family, on any cluster",
			svc:  newService(ipFamily(v6), headless, noSelector),
			want: all(ok(single, "IPv6")),
		},
		{
			name: "1.16 ipFamily on a headless Service with a selector",
			svc:  newService(ipFamily(v6), headless),
			want: map[string]outcome{
				"IPv4": fails(`spec.ipFamily: Invalid value: "IPv6": only the following families are allowed: IPv4`),
				"IPv6": ok(single, "IPv6"), "IPv4,IPv6": ok(single, "IPv6"), "IPv6,IPv4": ok(single, "IPv6"),
			},
		},
		{
			name: "1.16 ipFamily on an ExternalName Service is dropped",
			svc:  newService(externalName, ipFamily(v4)),
			want: all(ok("", "")),
		},
	}
	for _, tt := range tests {
		for _, sh := range shapes {
			want, found := tt.want[sh.name]
			if !found {
				want, found = tt.want["*"]
			}
			if !found {
				t.Fatalf("%s: no outcome for the %s cluster", tt.name, sh.name)
			}
			t.Run(tt.name+"/"+sh.name, func(t *testing.T) {
				a, ranges := newAllocators(t, sh.cfg)
				svc := tt.svc.DeepCopy()
				PrepareForCreate(svc, sh.cfg)
				errs := ValidateCreate(svc, sh.cfg)
				checkErrs(t, errs, want.errs)
				if len(want.errs) > 0 {
					return
				}
				if got := policyString(svc); got != string(want.policy) {
					t.Errorf("ipFamilyPolicy = %q, want %q", got, want.policy)
				}
				if got := famString(svc.Spec.IPFamilies); got != want.families {
					t.Errorf("ipFamilies = %q, want %q", got, want.families)
				}
				checkLegacyIPFamily(t, svc)

				txn, err := a.AllocateCreate(ctx, svc, false)
				if err != nil {
					t.Fatalf("AllocateCreate: %v", err)
				}
				txn.Commit()
				switch {
				case svc.Spec.Type == corev1.ServiceTypeExternalName:
					if svc.Spec.ClusterIP != "" || len(svc.Spec.ClusterIPs) != 0 {
						t.Errorf("ExternalName Service got cluster IPs %q", svc.Spec.ClusterIPs)
					}
				case isHeadless(svc):
				default:
					checkAllocated(t, svc, ranges)
				}
				// Kubernetes validates after allocating: the result must
				// still be valid, and preparing it again changes nothing.
				again := svc.DeepCopy()
				PrepareForCreate(again, sh.cfg)
				checkErrs(t, ValidateCreate(again, sh.cfg), nil)
				if famString(again.Spec.IPFamilies) != famString(svc.Spec.IPFamilies) || policyString(again) != policyString(svc) {
					t.Errorf("PrepareForCreate is not idempotent: %+v then %+v", svc.Spec, again.Spec)
				}
				checkLegacyIPFamily(t, svc)
			})
		}
	}
}
