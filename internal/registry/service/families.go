package service

import (
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/duet-net/duet/internal/apis/core"
)

// PrepareForCreate settles the IP family fields of a new Service before it
// is validated and its cluster IPs allocated:
//
//   - clusterIPs is filled from clusterIP for clients that only know the
//     singular field;
//   - the 1.16 spec.ipFamily becomes ipFamilies: [ipFamily] with a
//     SingleStack policy, when it names a family the cluster serves and
//     agrees with the clusterIP (otherwise validation reports it);
//   - ipFamilyPolicy, ipFamilies are defaulted as Kubernetes does (see
//     initIPFamilies);
//   - spec.ipFamily is set to ipFamilies[0], or cleared for ExternalName
//     Services, so that old and new clients read back the same Service.
//
// Requests that cannot be settled are left for ValidateCreate to report.
func PrepareForCreate(svc *core.Service, cfg Config) {
	normalizeClusterIPs(svc, nil)
	applyLegacyIPFamily(svc, nil, cfg)
	settled := len(initIPFamilies(svc, nil, cfg)) == 0 && len(validateClusterIPsRelatedFields(svc)) == 0
	syncLegacyIPFamily(svc, nil, settled)
}

// PrepareForUpdate is PrepareForCreate for an update of oldSvc (the stored
// object) to newSvc. Before the family fields it handles what an update
// adds:
//
//   - switching to a type that does not use a field (ExternalName has no
//     cluster IPs, ClusterIP no node ports...) clears the values the
//     server set, when the client left them unchanged;
//   - values the server allocated and the client omitted (clusterIP,
//     clusterIPs, node ports) are kept, so re-applying the original
//     manifest changes nothing;
//   - a missing ipFamilyPolicy is the old one, so that only an explicit
//     policy upgrades or downgrades a Service.
func PrepareForUpdate(newSvc, oldSvc *core.Service, cfg Config) {
	dropTypeDependentFields(newSvc, oldSvc)
	patchAllocatedValues(newSvc, oldSvc)
	normalizeClusterIPs(newSvc, oldSvc)
	applyLegacyIPFamily(newSvc, oldSvc, cfg)
	settled := len(initIPFamilies(newSvc, oldSvc, cfg)) == 0 && len(validateClusterIPsRelatedFields(newSvc)) == 0
	syncLegacyIPFamily(newSvc, oldSvc, settled)
}

// initIPFamilies defaults ipFamilyPolicy and ipFamilies from the request
// and the cluster, the way Kubernetes' allocator initialises them, and
// returns the errors Kubernetes reports while doing so. It stops at the
// first group of errors, leaving the fields as far as they got; run again
// on its own output it changes nothing and returns the same errors, which
// is how validation computes them.
//
// Errors of the clusterIPs/ipFamilies fields themselves (bad addresses,
// duplicates, clusterIP/clusterIPs mismatch) stop it silently: validation
// reports those.
func initIPFamilies(svc, old *core.Service, cfg Config) field.ErrorList {
	if !needsClusterIP(svc) {
		return nil
	}
	// A PreferDualStack Service that the client did not touch stays as it
	// is, even if the cluster gained or lost a family since: only an
	// explicit change of policy, clusterIPs or ipFamilies re-shapes it.
	if isUntouchedPreferDualStack(svc, old) {
		return nil
	}

	spec := &svc.Spec
	if spec.IPFamilyPolicy == nil {
		var p corev1.IPFamilyPolicy
		switch {
		case old != nil && old.Spec.IPFamilyPolicy != nil:
			p = *old.Spec.IPFamilyPolicy
		case spec.ClusterIP == corev1.ClusterIPNone && len(spec.Selector) == 0:
			// Headless without a selector: its endpoints are the user's,
			// of any family, so it takes both.
			p = corev1.IPFamilyPolicyRequireDualStack
		default:
			p = corev1.IPFamilyPolicySingleStack
		}
		spec.IPFamilyPolicy = &p
	}
	policy := *spec.IPFamilyPolicy

	if len(validateClusterIPsRelatedFields(svc)) != 0 {
		return nil
	}

	var errs field.ErrorList
	policyPath := field.NewPath("spec", "ipFamilyPolicy")
	if old != nil {
		if policy == corev1.IPFamilyPolicySingleStack {
			// SingleStack with the fields as they were is a request to
			// drop the secondary family; the primary cannot change.
			if slices.Equal(old.Spec.ClusterIPs, spec.ClusterIPs) && len(spec.ClusterIPs) > 1 {
				spec.ClusterIPs = spec.ClusterIPs[:1:1]
			}
			if slices.Equal(old.Spec.IPFamilies, spec.IPFamilies) && len(spec.IPFamilies) > 1 {
				spec.IPFamilies = spec.IPFamilies[:1:1]
			}
		} else {
			if len(spec.ClusterIPs) != 0 && len(spec.ClusterIPs) < len(old.Spec.ClusterIPs) {
				errs = append(errs, field.Invalid(policyPath, spec.IPFamilyPolicy,
					"must be 'SingleStack' to release the secondary cluster IP"))
			}
			if len(spec.IPFamilies) != 0 && len(spec.IPFamilies) < len(old.Spec.IPFamilies) {
				errs = append(errs, field.Invalid(policyPath, spec.IPFamilyPolicy,
					"must be 'SingleStack' to release the secondary IP family"))
			}
		}
	}
	if policy == corev1.IPFamilyPolicySingleStack {
		if len(spec.ClusterIPs) == 2 {
			errs = append(errs, field.Invalid(policyPath, spec.IPFamilyPolicy,
				"must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"))
		}
		if len(spec.IPFamilies) == 2 {
			errs = append(errs, field.Invalid(policyPath, spec.IPFamilyPolicy,
				"must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"))
		}
	}

	// Families follow the cluster IPs the client chose. They are set only
	// if nothing is wrong, so that a second run reports the same errors.
	fams := slices.Clone(spec.IPFamilies)
	for i, ip := range spec.ClusterIPs {
		if ip == corev1.ClusterIPNone {
			break
		}
		if i < len(fams) {
			continue // validated to agree with the address
		}
		fam := familyOfIP(ip)
		if !cfg.Has(fam) {
			errs = append(errs, field.Invalid(field.NewPath("spec", "clusterIPs").Index(i), spec.ClusterIPs,
				fmt.Sprintf("%s is not configured on this cluster", fam)))
			break
		}
		fams = append(fams, fam)
	}
	if len(errs) != 0 {
		return errs
	}
	spec.IPFamilies = fams

	// Headless without a selector may have any families, on any cluster:
	// no address is allocated for it.
	if spec.ClusterIP == corev1.ClusterIPNone && len(spec.Selector) == 0 {
		if len(spec.IPFamilies) == 0 {
			spec.IPFamilies = []corev1.IPFamily{cfg.primaryFamily()}
		}
		if len(spec.IPFamilies) == 1 && policy != corev1.IPFamilyPolicySingleStack {
			spec.IPFamilies = append(spec.IPFamilies, otherFamily(spec.IPFamilies[0]))
		}
		return nil
	}

	if policy == corev1.IPFamilyPolicyRequireDualStack && !cfg.IsDualStack() {
		errs = append(errs, field.Invalid(policyPath, spec.IPFamilyPolicy,
			"this cluster is not configured for dual-stack services"))
	}
	for i, fam := range spec.IPFamilies {
		if !cfg.Has(fam) {
			errs = append(errs, field.Invalid(field.NewPath("spec", "ipFamilies").Index(i), fam,
				"not configured on this cluster"))
		}
	}
	if len(errs) != 0 {
		return errs
	}

	if len(spec.IPFamilies) == 0 {
		spec.IPFamilies = []corev1.IPFamily{cfg.primaryFamily()}
	}
	if policy != corev1.IPFamilyPolicySingleStack && len(spec.IPFamilies) == 1 && cfg.IsDualStack() {
		spec.IPFamilies = append(spec.IPFamilies, otherFamily(spec.IPFamilies[0]))
	}
	return nil
}

// isUntouchedPreferDualStack reports an update of a PreferDualStack Service
// with a cluster IP that keeps the policy, the cluster IPs and the families.
func isUntouchedPreferDualStack(svc, old *core.Service) bool {
	if old == nil || svc.Spec.IPFamilyPolicy == nil || old.Spec.Type != svc.Spec.Type {
		return false
	}
	switch svc.Spec.Type {
	case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	default:
		return false
	}
	if *svc.Spec.IPFamilyPolicy != corev1.IPFamilyPolicyPreferDualStack {
		return false
	}
	if old.Spec.IPFamilyPolicy != nil && *old.Spec.IPFamilyPolicy != corev1.IPFamilyPolicyPreferDualStack {
		return false
	}
	return slices.Equal(old.Spec.ClusterIPs, svc.Spec.ClusterIPs) && slices.Equal(old.Spec.IPFamilies, svc.Spec.IPFamilies)
}

// applyLegacyIPFamily turns the 1.16 spec.ipFamily into the GA fields when
// the client gave no ipFamilies: ipFamily X means ipFamilies [X] and, unless
// the client chose a policy, SingleStack. It does so only when the result is
// a valid GA request (a family the cluster serves, or a headless Service
// without selector, and no clusterIP of the other family); otherwise the
// field is left for validation to report in the 1.16 terms.
//
// ipFamily is the Service's primary family, not a promise of a single
// family, and an explicit ipFamilyPolicy decides how many it gets:
// ipFamily IPv6 with RequireDualStack is ipFamilies [IPv6] with
// RequireDualStack, a dual-stack Service with IPv6 first. The reasons:
//
//   - In 1.16 ipFamily was the family of the one cluster IP; the GA API
//     gave that role to ipFamilies[0], the family of clusterIPs[0], and
//     lets ipFamilyPolicy alone choose single or dual stack. Mapping
//     ipFamily to ipFamilies[0] keeps both generations' meaning.
//   - A 1.16 client cannot send ipFamilyPolicy, so it always gets the
//     single-stack Service it asked for. Only a client that knows the GA
//     fields sends both, and its policy is an explicit request.
//   - Every Service is read back with ipFamily = ipFamilies[0], dual-stack
//     ones included. Refusing ipFamily next to a dual-stack policy would
//     refuse the object the server itself returns, breaking every
//     read-modify-write (kubectl edit, apply, client-go Update).
//
// On update a stored ipFamily is immutable, so nothing is mapped: an
// unchanged value adds nothing, a changed one is an error.
func applyLegacyIPFamily(svc, old *core.Service, cfg Config) {
	spec := &svc.Spec
	if spec.IPFamily == nil || !needsClusterIP(svc) || len(spec.IPFamilies) != 0 {
		return
	}
	if old != nil && needsClusterIP(old) && old.Spec.IPFamily != nil {
		return
	}
	fam := *spec.IPFamily
	if fam != corev1.IPv4Protocol && fam != corev1.IPv6Protocol {
		return
	}
	if !cfg.Has(fam) && !(spec.ClusterIP == corev1.ClusterIPNone && len(spec.Selector) == 0) {
		return
	}
	if ip, err := netip.ParseAddr(spec.ClusterIP); err == nil && familyOfAddr(ip) != fam {
		return
	}
	spec.IPFamilies = []corev1.IPFamily{fam}
	if spec.IPFamilyPolicy == nil {
		p := corev1.IPFamilyPolicySingleStack
		spec.IPFamilyPolicy = &p
	}
}

// syncLegacyIPFamily makes spec.ipFamily report ipFamilies[0], or nothing
// for an ExternalName Service. A value the client set is kept, so that a
// contradiction reaches validation instead of being overwritten; and
// nothing is filled in when the family fields did not settle (the request
// fails, and the errors are the GA fields' own).
func syncLegacyIPFamily(svc, old *core.Service, settled bool) {
	spec := &svc.Spec
	if !needsClusterIP(svc) {
		spec.IPFamily = nil
		return
	}
	if !settled || len(spec.IPFamilies) == 0 {
		return
	}
	fam := spec.IPFamilies[0]
	stored := old != nil && needsClusterIP(old) && old.Spec.IPFamily != nil
	// Headless Services may change families (they have no address to
	// keep): a stored ipFamily sent back unchanged follows ipFamilies.
	anyFamily := isHeadless(old) || isHeadless(svc)
	switch {
	case spec.IPFamily == nil:
		// Every GA client omits the field on update. It keeps its stored
		// value, which is ipFamilies[0] for any valid update.
		if stored && !anyFamily {
			fam = *old.Spec.IPFamily
		}
	case stored && anyFamily && *spec.IPFamily == *old.Spec.IPFamily:
	default:
		return
	}
	spec.IPFamily = &fam
}

// normalizeClusterIPs keeps clusterIP and clusterIPs in step for clients
// that only know one of them, as Kubernetes does before anything looks at
// either.
func normalizeClusterIPs(newSvc, oldSvc *core.Service) {
	spec := &newSvc.Spec
	if oldSvc == nil {
		// An old client sent the singular field only.
		if spec.ClusterIP != "" && len(spec.ClusterIPs) == 0 {
			spec.ClusterIPs = []string{spec.ClusterIP}
		}
		return
	}
	old := &oldSvc.Spec
	// An old client sent the clusterIP it read but no clusterIPs.
	if len(old.ClusterIPs) > 0 && len(spec.ClusterIPs) == 0 && old.ClusterIP == spec.ClusterIP {
		spec.ClusterIPs = slices.Clone(old.ClusterIPs)
	}
	if old.ClusterIP == spec.ClusterIP {
		return
	}
	sameIPs := slices.Equal(old.ClusterIPs, spec.ClusterIPs)
	if old.ClusterIP != "" && spec.ClusterIP == "" {
		// Clearing clusterIP and leaving clusterIPs as read clears both.
		if sameIPs {
			spec.ClusterIPs = nil
		}
		return
	}
	// Changing clusterIP and leaving clusterIPs as read changes both;
	// validation decides whether the change is allowed.
	if sameIPs {
		spec.ClusterIPs = []string{spec.ClusterIP}
	}
}

// patchAllocatedValues keeps what the server allocated when the client
// omits it, so that a manifest can be applied again unchanged.
func patchAllocatedValues(newSvc, oldSvc *core.Service) {
	spec, old := &newSvc.Spec, &oldSvc.Spec
	if needsClusterIP(oldSvc) && needsClusterIP(newSvc) {
		if spec.ClusterIP == "" {
			spec.ClusterIP = old.ClusterIP
		}
		if len(spec.ClusterIPs) == 0 && len(old.ClusterIPs) > 0 {
			spec.ClusterIPs = slices.Clone(old.ClusterIPs)
		}
	}

	if needsNodePort(oldSvc) && needsNodePort(newSvc) {
		// Node ports by port name, unless the client gave that number to
		// another port already.
		inNew := map[int32]bool{}
		for _, p := range spec.Ports {
			if p.NodePort != 0 {
				inNew[p.NodePort] = true
			}
		}
		byName := map[string]int32{}
		for _, p := range old.Ports {
			if p.NodePort != 0 && !inNew[p.NodePort] {
				byName[p.Name] = p.NodePort
			}
		}
		for i := range spec.Ports {
			if p := &spec.Ports[i]; p.NodePort == 0 {
				p.NodePort = byName[p.Name]
			}
		}
	}

	if needsHealthCheckNodePort(oldSvc) && needsHealthCheckNodePort(newSvc) && spec.HealthCheckNodePort == 0 {
		spec.HealthCheckNodePort = old.HealthCheckNodePort
	}
}

// dropTypeDependentFields clears, on a type change, the fields the new type
// does not use, when the client left them as they were (so they were the
// server's doing or a stale read). A value the client changed is kept for
// validation to refuse.
func dropTypeDependentFields(newSvc, oldSvc *core.Service) {
	spec, old := &newSvc.Spec, &oldSvc.Spec
	if needsClusterIP(oldSvc) && !needsClusterIP(newSvc) {
		if old.ClusterIP == spec.ClusterIP && slices.Equal(old.ClusterIPs, spec.ClusterIPs) {
			spec.ClusterIP = ""
			spec.ClusterIPs = nil
		}
		if slices.Equal(old.IPFamilies, spec.IPFamilies) {
			spec.IPFamilies = nil
		}
		if policyOf(oldSvc) == policyOf(newSvc) {
			spec.IPFamilyPolicy = nil
		}
	}

	if needsNodePort(oldSvc) && !needsNodePort(newSvc) && noNewNodePorts(oldSvc, newSvc) {
		for i := range spec.Ports {
			spec.Ports[i].NodePort = 0
		}
	}
	if needsHealthCheckNodePort(oldSvc) && !needsHealthCheckNodePort(newSvc) && old.HealthCheckNodePort == spec.HealthCheckNodePort {
		spec.HealthCheckNodePort = 0
	}
	if old.Type == corev1.ServiceTypeLoadBalancer && spec.Type != corev1.ServiceTypeLoadBalancer {
		if a, b := old.AllocateLoadBalancerNodePorts, spec.AllocateLoadBalancerNodePorts; a != nil && b != nil && *a == *b {
			spec.AllocateLoadBalancerNodePorts = nil
		}
		if equalPtr(old.LoadBalancerClass, spec.LoadBalancerClass) {
			spec.LoadBalancerClass = nil
		}
	}
	if externallyAccessible(oldSvc) && !externallyAccessible(newSvc) && old.ExternalTrafficPolicy == spec.ExternalTrafficPolicy {
		spec.ExternalTrafficPolicy = ""
	}
	// The load balancer is going away with the type.
	if spec.Type != corev1.ServiceTypeLoadBalancer {
		newSvc.Status.LoadBalancer = corev1.LoadBalancerStatus{}
	}
}

// noNewNodePorts reports whether newSvc uses no node port that oldSvc did
// not: ports may be edited or removed, not given new node ports.
func noNewNodePorts(oldSvc, newSvc *core.Service) bool {
	had := map[int32]bool{}
	for _, p := range oldSvc.Spec.Ports {
		had[p.NodePort] = true
	}
	for _, p := range newSvc.Spec.Ports {
		if p.NodePort != 0 && !had[p.NodePort] {
			return false
		}
	}
	return true
}

func needsClusterIP(svc *core.Service) bool {
	return svc.Spec.Type != corev1.ServiceTypeExternalName
}

func needsNodePort(svc *core.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer
}

// externallyAccessible is Kubernetes' test for Services reachable from
// outside the cluster, the ones externalTrafficPolicy applies to.
func externallyAccessible(svc *core.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeLoadBalancer ||
		svc.Spec.Type == corev1.ServiceTypeNodePort ||
		(svc.Spec.Type == corev1.ServiceTypeClusterIP && len(svc.Spec.ExternalIPs) > 0)
}

func needsHealthCheckNodePort(svc *core.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeLoadBalancer &&
		svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
}

// isHeadless reports a Service whose clusterIPs is exactly ["None"].
func isHeadless(svc *core.Service) bool {
	return svc != nil && len(svc.Spec.ClusterIPs) == 1 && svc.Spec.ClusterIPs[0] == corev1.ClusterIPNone
}

func policyOf(svc *core.Service) corev1.IPFamilyPolicy {
	if svc.Spec.IPFamilyPolicy == nil {
		return ""
	}
	return *svc.Spec.IPFamilyPolicy
}

// familyOfIP is the family of a valid address; anything else reads as
// IPv4, as in Kubernetes, and is refused by validation anyway.
func familyOfIP(ip string) corev1.IPFamily {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return corev1.IPv4Protocol
	}
	return familyOfAddr(a)
}

func familyOfAddr(a netip.Addr) corev1.IPFamily {
	if a.Is4() {
		return corev1.IPv4Protocol
	}
	return corev1.IPv6Protocol
}

func otherFamily(f corev1.IPFamily) corev1.IPFamily {
	if f == corev1.IPv4Protocol {
		return corev1.IPv6Protocol
	}
	return corev1.IPv4Protocol
}

func equalPtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}
