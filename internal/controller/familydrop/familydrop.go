// Package familydrop takes an IP family out of a running cluster, the
// upstream way: `duet server` restarted on its data directory with that
// family's range left out of --service-cluster-ip-range, --cluster-cidr, or
// both.
//
// It has two parts, both driven by the set of families the cluster keeps
// (Families), so that ranges read from flags today and from ServiceCIDR or
// ClusterCIDR objects later can drive them alike:
//
//   - Blockers, checked before the server serves: the Services that cannot
//     live without the family (RequireDualStack, or the family first in
//     spec.ipFamilies, whose cluster IP cannot change in place). While any
//     exists the server refuses to start; RefusalError says which and what
//     to do.
//   - Reconciler, run by the elected controller manager: every Service of
//     two families becomes SingleStack of its first (kube-dns included),
//     LoadBalancer ingress IPs of the dropped family leave the status,
//     every Node's spec.podCIDRs loses its CIDR of the dropped family; then
//     the records nothing holds any more are deleted: IPAddress objects,
//     load balancer IP records and node CIDR records of that family. A pass
//     writes only what is still to change, so a pass cut short (a kill -9)
//     is finished by the next one, at the next start or leadership term.
//
// The rest follows from the Services and Nodes: the EndpointSlice
// controller deletes the slices of a family a Service no longer has,
// kube-dns's controller its own, the kubernetes Service's reconciler those
// of a family the cluster does not serve; agents drop the family from pods,
// routes, the proxy and DNS when their Node's pod CIDRs shrink.
package familydrop

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Families are the IP families the cluster keeps, primary first: those of
// its service ranges and those of its cluster CIDRs. An empty list keeps
// everything of that kind as it is (a cluster without --cluster-cidr has no
// pod CIDRs to trim).
type Families struct {
	Services []corev1.IPFamily
	Pods     []corev1.IPFamily
}

var allFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}

// dropped returns the families keep lacks; none when keep is empty.
func dropped(keep []corev1.IPFamily) []corev1.IPFamily {
	if len(keep) == 0 {
		return nil
	}
	var out []corev1.IPFamily
	for _, f := range allFamilies {
		if !slices.Contains(keep, f) {
			out = append(out, f)
		}
	}
	return out
}

// DroppedServiceFamilies returns the families Services may no longer have.
func (f Families) DroppedServiceFamilies() []corev1.IPFamily { return dropped(f.Services) }

// DroppedPodFamilies returns the families Nodes' pod CIDRs may no longer
// have.
func (f Families) DroppedPodFamilies() []corev1.IPFamily { return dropped(f.Pods) }

// Reasons a Service blocks dropping a family.
const (
	// ReasonRequireDualStack: spec.ipFamilyPolicy RequireDualStack, which
	// a cluster of one family refuses.
	ReasonRequireDualStack = "spec.ipFamilyPolicy is RequireDualStack"
	// ReasonPrimaryDropped: the dropped family is spec.ipFamilies[0], the
	// family of the Service's primary cluster IP, which cannot change in
	// place.
	ReasonPrimaryDropped = "spec.ipFamilies[0] is the dropped family"
)

// Blocker is a Service that cannot stay as it is once the cluster's
// Services have only the families kept.
type Blocker struct {
	Namespace, Name string
	Reason          string
}

// DuetOwned reports the Services Duet itself downgrades: kube-system/kube-dns
// while it has no selector (a user who gave it one runs DNS of their own,
// and it is then the user's Service like any other).
func DuetOwned(svc *corev1.Service) bool {
	return svc.Namespace == metav1.NamespaceSystem && svc.Name == "kube-dns" && len(svc.Spec.Selector) == 0
}

// anyFamily reports the Services whose families say nothing about the
// cluster's: ExternalName (no address) and headless without a selector (its
// endpoints are the user's, of any family; Kubernetes gives it both
// families on a single-stack cluster too).
func anyFamily(svc *corev1.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeExternalName ||
		(svc.Spec.ClusterIP == corev1.ClusterIPNone && len(svc.Spec.Selector) == 0)
}

// Blocking returns why svc cannot keep running when Services may have only
// the families keep, or "" when it can (downgraded if need be).
func Blocking(svc *corev1.Service, keep []corev1.IPFamily) string {
	if len(dropped(keep)) == 0 || anyFamily(svc) || DuetOwned(svc) {
		return ""
	}
	if len(svc.Spec.IPFamilies) > 0 && !slices.Contains(keep, svc.Spec.IPFamilies[0]) {
		return ReasonPrimaryDropped
	}
	if p := svc.Spec.IPFamilyPolicy; p != nil && *p == corev1.IPFamilyPolicyRequireDualStack && len(keep) < 2 {
		return ReasonRequireDualStack
	}
	return ""
}

// Blockers returns the Services of svcs that block dropping the families
// keep lacks, sorted by namespace and name.
func Blockers(svcs []*corev1.Service, keep []corev1.IPFamily) []Blocker {
	var out []Blocker
	for _, s := range svcs {
		if why := Blocking(s, keep); why != "" {
			out = append(out, Blocker{Namespace: s.Namespace, Name: s.Name, Reason: why})
		}
	}
	slices.SortFunc(out, func(a, b Blocker) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// maxNamed is how many Services a refusal names per reason; the rest are
// counted.
const maxNamed = 5

// RefusalError is the error of a server refusing to drop a family from
// flag (what, such as "the IPv6 range fd00:10:96::/108") while blockers
// exist: it names the field, up to maxNamed Services per reason with a
// count of the others, and what to do.
func RefusalError(flag, what string, blockers []Blocker) error {
	if len(blockers) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: cannot drop %s: %d Service(s) need that family", flag, what, len(blockers))
	for _, reason := range []string{ReasonRequireDualStack, ReasonPrimaryDropped} {
		var names []string
		for _, bl := range blockers {
			if bl.Reason == reason {
				names = append(names, bl.Namespace+"/"+bl.Name)
			}
		}
		if len(names) == 0 {
			continue
		}
		fmt.Fprintf(&b, "; %s for %s", reason, strings.Join(names[:min(len(names), maxNamed)], ", "))
		if len(names) > maxNamed {
			fmt.Fprintf(&b, " and %d more", len(names)-maxNamed)
		}
	}
	b.WriteString(". Start the server with its previous ranges and, for each of them, either set spec.ipFamilyPolicy to PreferDualStack" +
		" (this restart then makes it SingleStack of its first family) or delete it" +
		" (a Service whose first family is the dropped one must be recreated with the other first); then restart with the smaller ranges" +
		" (kubectl get svc -A -o custom-columns=NS:.metadata.namespace,NAME:.metadata.name,POLICY:.spec.ipFamilyPolicy,FAMILIES:.spec.ipFamilies lists them)")
	return fmt.Errorf("%s", b.String())
}
