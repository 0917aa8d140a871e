package service

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/validate/content"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/duet-net/duet/internal/apis/core"
)

// maxClientIPAffinitySeconds is the longest ClientIP session affinity
// timeout Kubernetes accepts: one day.
const maxClientIPAffinitySeconds = 86400

// The values each enumerated field accepts, sorted as Kubernetes lists them
// in NotSupported errors.
var (
	sessionAffinities     = []corev1.ServiceAffinity{corev1.ServiceAffinityClientIP, corev1.ServiceAffinityNone}
	serviceTypes          = []corev1.ServiceType{corev1.ServiceTypeClusterIP, corev1.ServiceTypeExternalName, corev1.ServiceTypeLoadBalancer, corev1.ServiceTypeNodePort}
	portProtocols         = []corev1.Protocol{corev1.ProtocolSCTP, corev1.ProtocolTCP, corev1.ProtocolUDP}
	ipFamilies            = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	ipFamilyPolicies      = []corev1.IPFamilyPolicy{corev1.IPFamilyPolicyPreferDualStack, corev1.IPFamilyPolicyRequireDualStack, corev1.IPFamilyPolicySingleStack}
	externalTrafficPolicy = []corev1.ServiceExternalTrafficPolicy{corev1.ServiceExternalTrafficPolicyCluster, corev1.ServiceExternalTrafficPolicyLocal}
	internalTrafficPolicy = []corev1.ServiceInternalTrafficPolicy{corev1.ServiceInternalTrafficPolicyCluster, corev1.ServiceInternalTrafficPolicyLocal}
	trafficDistributions  = []string{corev1.ServiceTrafficDistributionPreferClose, corev1.ServiceTrafficDistributionPreferSameNode, corev1.ServiceTrafficDistributionPreferSameZone}
)

// ValidateCreate validates a new Service after PrepareForCreate: Kubernetes'
// ValidateService, the cluster-dependent checks Kubernetes makes while
// allocating (families the cluster lacks, RequireDualStack on a
// single-stack cluster...), and the 1.16 spec.ipFamily rules.
func ValidateCreate(svc *core.Service, cfg Config) field.ErrorList {
	// Service names are RFC 1123 labels, so they may start with a digit
	// (RelaxedServiceNameValidation, locked on since Kubernetes 1.37); the
	// cluster DNS names a Service by it all the same.
	errs := apivalidation.ValidateObjectMeta(&svc.ObjectMeta, true, apivalidation.NameIsDNSLabel, field.NewPath("metadata"))
	errs = append(errs, validateService(svc)...)
	return append(errs, familyErrors(svc, nil, cfg)...)
}

// ValidateUpdate validates an update of oldSvc to newSvc after
// PrepareForUpdate: everything ValidateCreate checks, plus what may not
// change: the primary cluster IP and family (secondary ones come and go
// with the policy), spec.ipFamily (except to or from ExternalName), the
// loadBalancerClass and the healthCheckNodePort.
func ValidateUpdate(newSvc, oldSvc *core.Service, cfg Config) field.ErrorList {
	errs := apivalidation.ValidateObjectMetaUpdate(&newSvc.ObjectMeta, &oldSvc.ObjectMeta, field.NewPath("metadata"))
	errs = append(errs, validateLoadBalancerClassUpdate(newSvc, oldSvc)...)
	errs = append(errs, validateHealthCheckNodePortUpdate(newSvc, oldSvc)...)
	errs = append(errs, validateService(newSvc)...)
	return append(errs, familyErrors(newSvc, oldSvc, cfg)...)
}

// familyErrors are the errors of the cluster IP and IP family fields, old
// being nil on create. Like Kubernetes it reports the allocator's
// cluster-dependent errors only for well-formed fields, and the update
// rules only when those pass (they would repeat them).
func familyErrors(svc, old *core.Service, cfg Config) field.ErrorList {
	errs := validateClusterIPsRelatedFields(svc)
	var initErrs field.ErrorList
	if len(errs) == 0 {
		initErrs = initIPFamilies(svc.DeepCopy(), old, cfg)
		errs = append(errs, initErrs...)
	}
	if old != nil && len(initErrs) == 0 {
		errs = append(errs, validateUpgradeDowngradeClusterIPs(old, svc)...)
		errs = append(errs, validateUpgradeDowngradeIPFamilies(old, svc)...)
	}
	return append(errs, validateLegacyIPFamily(svc, old, cfg)...)
}

// validateService is Kubernetes' ValidateService without the object
// metadata (which ValidateCreate and ValidateUpdate check) and the cluster
// IP and family fields (which familyErrors checks).
func validateService(svc *core.Service) field.ErrorList {
	metaPath := field.NewPath("metadata")
	var errs field.ErrorList

	hints, hintsSet := svc.Annotations[corev1.DeprecatedAnnotationTopologyAwareHints]
	mode, modeSet := svc.Annotations[corev1.AnnotationTopologyMode]
	if hintsSet && modeSet && hints != mode {
		errs = append(errs, field.Invalid(metaPath.Child("annotations").Key(corev1.AnnotationTopologyMode), mode,
			fmt.Sprintf("must match annotations[%s] when both are specified", corev1.DeprecatedAnnotationTopologyAwareHints)))
	}

	spec := &svc.Spec
	specPath := field.NewPath("spec")
	headless := isHeadless(svc)

	if len(spec.Ports) == 0 && !headless && spec.Type != corev1.ServiceTypeExternalName {
		errs = append(errs, field.Required(specPath.Child("ports"), ""))
	}
	switch spec.Type {
	case corev1.ServiceTypeLoadBalancer:
		if headless {
			errs = append(errs, field.Invalid(specPath.Child("clusterIPs").Index(0), spec.ClusterIPs[0], "may not be set to 'None' for LoadBalancer services"))
		}
	case corev1.ServiceTypeNodePort:
		if headless {
			errs = append(errs, field.Invalid(specPath.Child("clusterIPs").Index(0), spec.ClusterIPs[0], "may not be set to 'None' for NodePort services"))
		}
	case corev1.ServiceTypeExternalName:
		// clusterIPs rather than clusterIP: Prepare fills the former from
		// the latter.
		if len(spec.ClusterIPs) > 0 {
			errs = append(errs, field.Forbidden(specPath.Child("clusterIPs"), "may not be set for ExternalName services"))
		}
		if len(spec.IPFamilies) > 0 {
			errs = append(errs, field.Forbidden(specPath.Child("ipFamilies"), "may not be set for ExternalName services"))
		}
		if spec.IPFamilyPolicy != nil {
			errs = append(errs, field.Forbidden(specPath.Child("ipFamilyPolicy"), "may not be set for ExternalName services"))
		}
		// A CNAME, which may end in a dot to say it is fully qualified.
		if cname := strings.TrimSuffix(spec.ExternalName, "."); cname != "" {
			errs = append(errs, validateDNS1123Subdomain(cname, specPath.Child("externalName"))...)
		} else {
			errs = append(errs, field.Required(specPath.Child("externalName"), ""))
		}
	}

	portsPath := specPath.Child("ports")
	names := map[string]bool{}
	for i := range spec.Ports {
		errs = append(errs, validateServicePort(&spec.Ports[i], len(spec.Ports) > 1, names, portsPath.Index(i))...)
	}

	if spec.Selector != nil {
		errs = append(errs, metav1validation.ValidateLabels(spec.Selector, specPath.Child("selector"))...)
	}

	switch spec.SessionAffinity {
	case "":
		errs = append(errs, field.Required(specPath.Child("sessionAffinity"), ""))
	case corev1.ServiceAffinityClientIP:
		errs = append(errs, validateClientIPAffinityConfig(spec.SessionAffinityConfig, specPath.Child("sessionAffinityConfig"))...)
	case corev1.ServiceAffinityNone:
		if spec.SessionAffinityConfig != nil {
			errs = append(errs, field.Forbidden(specPath.Child("sessionAffinityConfig"),
				fmt.Sprintf("must not be set when session affinity is %s", corev1.ServiceAffinityNone)))
		}
	default:
		errs = append(errs, field.NotSupported(specPath.Child("sessionAffinity"), spec.SessionAffinity, sessionAffinities))
	}

	for i, ip := range spec.ExternalIPs {
		idxPath := specPath.Child("externalIPs").Index(i)
		if ipErrs := utilvalidation.IsValidIP(idxPath, ip); len(ipErrs) != 0 {
			errs = append(errs, ipErrs...)
		} else {
			errs = append(errs, validateNonSpecialIP(ip, idxPath)...)
		}
	}

	switch {
	case spec.Type == "":
		errs = append(errs, field.Required(specPath.Child("type"), ""))
	case !contains(serviceTypes, spec.Type):
		errs = append(errs, field.NotSupported(specPath.Child("type"), spec.Type, serviceTypes))
	}

	if spec.Type == corev1.ServiceTypeClusterIP {
		for i := range spec.Ports {
			if spec.Ports[i].NodePort != 0 {
				errs = append(errs, field.Forbidden(portsPath.Index(i).Child("nodePort"), "may not be used when `type` is 'ClusterIP'"))
			}
		}
	}

	// A node port, and a port, serves one protocol once.
	type protoPort struct {
		proto corev1.Protocol
		port  int32
	}
	nodePorts := map[protoPort]bool{}
	for i, p := range spec.Ports {
		if p.NodePort == 0 {
			continue
		}
		k := protoPort{p.Protocol, p.NodePort}
		if nodePorts[k] {
			errs = append(errs, field.Duplicate(portsPath.Index(i).Child("nodePort"), p.NodePort))
		}
		nodePorts[k] = true
	}
	ports := map[protoPort]bool{}
	for i, p := range spec.Ports {
		k := protoPort{p.Protocol, p.Port}
		if ports[k] {
			errs = append(errs, field.Duplicate(portsPath.Index(i), corev1.ServicePort{Protocol: p.Protocol, Port: p.Port}))
		}
		ports[k] = true
	}

	if len(spec.LoadBalancerSourceRanges) > 0 {
		// Kubernetes spells this path with a capital L.
		rangesPath := specPath.Child("LoadBalancerSourceRanges")
		if spec.Type != corev1.ServiceTypeLoadBalancer {
			errs = append(errs, field.Forbidden(rangesPath, "may only be used when `type` is 'LoadBalancer'"))
		}
		for i, v := range spec.LoadBalancerSourceRanges {
			// Space-padded values are a historical allowance.
			errs = append(errs, utilvalidation.IsValidCIDR(rangesPath.Index(i), strings.TrimSpace(v))...)
		}
	} else if v, ok := svc.Annotations[corev1.AnnotationLoadBalancerSourceRangesKey]; ok {
		annPath := metaPath.Child("annotations").Key(corev1.AnnotationLoadBalancerSourceRangesKey)
		if spec.Type != corev1.ServiceTypeLoadBalancer {
			errs = append(errs, field.Forbidden(annPath, "may only be used when `type` is 'LoadBalancer'"))
		}
		if v = strings.TrimSpace(v); v != "" {
			for _, cidr := range strings.Split(v, ",") {
				errs = append(errs, utilvalidation.IsValidCIDR(annPath, strings.TrimSpace(cidr))...)
			}
		}
	}

	if spec.AllocateLoadBalancerNodePorts != nil && spec.Type != corev1.ServiceTypeLoadBalancer {
		errs = append(errs, field.Forbidden(specPath.Child("allocateLoadBalancerNodePorts"), "may only be used when `type` is 'LoadBalancer'"))
	}
	if spec.Type == corev1.ServiceTypeLoadBalancer && spec.AllocateLoadBalancerNodePorts == nil {
		errs = append(errs, field.Required(specPath.Child("allocateLoadBalancerNodePorts"), ""))
	}

	if spec.Type == corev1.ServiceTypeLoadBalancer {
		if spec.LoadBalancerClass != nil {
			errs = append(errs, validateQualifiedName(*spec.LoadBalancerClass, specPath.Child("loadBalancerClass"))...)
		}
	} else if spec.LoadBalancerClass != nil {
		errs = append(errs, field.Forbidden(specPath.Child("loadBalancerClass"), "may only be used when `type` is 'LoadBalancer'"))
	}

	errs = append(errs, validateExternalTrafficPolicy(svc)...)

	if spec.InternalTrafficPolicy == nil {
		// Not required of ExternalName Services, for historical reasons.
		if spec.Type == corev1.ServiceTypeNodePort || spec.Type == corev1.ServiceTypeLoadBalancer || spec.Type == corev1.ServiceTypeClusterIP {
			errs = append(errs, field.Required(specPath.Child("internalTrafficPolicy"), ""))
		}
	} else if !contains(internalTrafficPolicy, *spec.InternalTrafficPolicy) {
		errs = append(errs, field.NotSupported(specPath.Child("internalTrafficPolicy"), *spec.InternalTrafficPolicy, internalTrafficPolicy))
	}

	if td := spec.TrafficDistribution; td != nil && !contains(trafficDistributions, *td) {
		errs = append(errs, field.NotSupported(specPath.Child("trafficDistribution"), *td, trafficDistributions))
	}
	return errs
}

func validateServicePort(sp *corev1.ServicePort, requireName bool, names map[string]bool, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	if requireName && sp.Name == "" {
		errs = append(errs, field.Required(fldPath.Child("name"), ""))
	} else if sp.Name != "" {
		for _, msg := range utilvalidation.IsDNS1123Label(sp.Name) {
			errs = append(errs, field.Invalid(fldPath.Child("name"), sp.Name, msg))
		}
		if names[sp.Name] {
			errs = append(errs, field.Duplicate(fldPath.Child("name"), sp.Name))
		}
		names[sp.Name] = true
	}

	for _, msg := range utilvalidation.IsValidPortNum(int(sp.Port)) {
		errs = append(errs, field.Invalid(fldPath.Child("port"), sp.Port, msg))
	}

	switch {
	case sp.Protocol == "":
		errs = append(errs, field.Required(fldPath.Child("protocol"), ""))
	case !contains(portProtocols, sp.Protocol):
		errs = append(errs, field.NotSupported(fldPath.Child("protocol"), sp.Protocol, portProtocols))
	}

	errs = append(errs, validatePortNumOrName(sp.TargetPort, fldPath.Child("targetPort"))...)

	if sp.AppProtocol != nil {
		errs = append(errs, validateQualifiedName(*sp.AppProtocol, fldPath.Child("appProtocol"))...)
	}
	return errs
}

func validatePortNumOrName(port intstr.IntOrString, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch port.Type {
	case intstr.Int:
		for _, msg := range utilvalidation.IsValidPortNum(port.IntValue()) {
			errs = append(errs, field.Invalid(fldPath, port.IntValue(), msg))
		}
	case intstr.String:
		for _, msg := range utilvalidation.IsValidPortName(port.StrVal) {
			errs = append(errs, field.Invalid(fldPath, port.StrVal, msg))
		}
	default:
		errs = append(errs, field.InternalError(fldPath, fmt.Errorf("unknown type: %v", port.Type)))
	}
	return errs
}

func validateClientIPAffinityConfig(cfg *corev1.SessionAffinityConfig, fldPath *field.Path) field.ErrorList {
	why := fmt.Sprintf("when session affinity type is %s", corev1.ServiceAffinityClientIP)
	switch {
	case cfg == nil:
		return field.ErrorList{field.Required(fldPath, why)}
	case cfg.ClientIP == nil:
		return field.ErrorList{field.Required(fldPath.Child("clientIP"), why)}
	case cfg.ClientIP.TimeoutSeconds == nil:
		return field.ErrorList{field.Required(fldPath.Child("clientIP", "timeoutSeconds"), why)}
	}
	if t := *cfg.ClientIP.TimeoutSeconds; t <= 0 || t > maxClientIPAffinitySeconds {
		return field.ErrorList{field.Invalid(fldPath.Child("clientIP", "timeoutSeconds"), t,
			fmt.Sprintf("must be greater than 0 and less than %d", maxClientIPAffinitySeconds))}
	}
	return nil
}

// validateExternalTrafficPolicy checks externalTrafficPolicy and
// healthCheckNodePort against the type. A missing healthCheckNodePort is
// not an error: Kubernetes allocates one before it validates, Duet has no
// node port allocator yet.
func validateExternalTrafficPolicy(svc *core.Service) field.ErrorList {
	var errs field.ErrorList
	spec := &svc.Spec
	specPath := field.NewPath("spec")
	if !externallyAccessible(svc) {
		if spec.ExternalTrafficPolicy != "" {
			errs = append(errs, field.Invalid(specPath.Child("externalTrafficPolicy"), spec.ExternalTrafficPolicy,
				"may only be set for externally-accessible services"))
		}
	} else if spec.ExternalTrafficPolicy == "" {
		errs = append(errs, field.Required(specPath.Child("externalTrafficPolicy"), ""))
	} else if !contains(externalTrafficPolicy, spec.ExternalTrafficPolicy) {
		errs = append(errs, field.NotSupported(specPath.Child("externalTrafficPolicy"), spec.ExternalTrafficPolicy, externalTrafficPolicy))
	}

	if !needsHealthCheckNodePort(svc) {
		if spec.HealthCheckNodePort != 0 {
			errs = append(errs, field.Invalid(specPath.Child("healthCheckNodePort"), spec.HealthCheckNodePort,
				"may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"))
		}
	} else if spec.HealthCheckNodePort != 0 {
		for _, msg := range utilvalidation.IsValidPortNum(int(spec.HealthCheckNodePort)) {
			errs = append(errs, field.Invalid(specPath.Child("healthCheckNodePort"), spec.HealthCheckNodePort, msg))
		}
	}
	return errs
}

func validateHealthCheckNodePortUpdate(newSvc, oldSvc *core.Service) field.ErrorList {
	if needsHealthCheckNodePort(oldSvc) && needsHealthCheckNodePort(newSvc) &&
		oldSvc.Spec.HealthCheckNodePort != 0 && newSvc.Spec.HealthCheckNodePort != oldSvc.Spec.HealthCheckNodePort {
		return field.ErrorList{field.Forbidden(field.NewPath("spec", "healthCheckNodePort"), "field is immutable")}
	}
	return nil
}

func validateLoadBalancerClassUpdate(newSvc, oldSvc *core.Service) field.ErrorList {
	if oldSvc.Spec.Type == corev1.ServiceTypeLoadBalancer && newSvc.Spec.Type == corev1.ServiceTypeLoadBalancer &&
		!equalPtr(oldSvc.Spec.LoadBalancerClass, newSvc.Spec.LoadBalancerClass) {
		return field.ErrorList{field.Invalid(field.NewPath("spec", "loadBalancerClass"), newSvc.Spec.LoadBalancerClass, "may not change once set")}
	}
	return nil
}

// validateClusterIPsRelatedFields checks clusterIP, clusterIPs, ipFamilies
// and ipFamilyPolicy on their own and against each other, without looking
// at the cluster: Kubernetes' ValidateServiceClusterIPsRelatedFields.
func validateClusterIPsRelatedFields(svc *core.Service) field.ErrorList {
	spec := &svc.Spec
	// ExternalName Services have none of these; validateService says so.
	if spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	var errs field.ErrorList
	specPath := field.NewPath("spec")
	ipsPath := specPath.Child("clusterIPs")
	famPath := specPath.Child("ipFamilies")

	if spec.ClusterIP != "" {
		if len(spec.ClusterIPs) == 0 {
			errs = append(errs, field.Required(ipsPath, ""))
		} else if spec.ClusterIPs[0] != spec.ClusterIP {
			errs = append(errs, field.Invalid(ipsPath, spec.ClusterIPs, "first value must match `clusterIP`"))
		}
	} else if len(spec.ClusterIPs) != 0 {
		errs = append(errs, field.Invalid(ipsPath, spec.ClusterIPs, "must be empty when `clusterIP` is not specified"))
	}

	seen := map[corev1.IPFamily]bool{}
	for i, fam := range spec.IPFamilies {
		if !contains(ipFamilies, fam) {
			errs = append(errs, field.NotSupported(famPath.Index(i), fam, ipFamilies))
		}
		// No duplicates also means at most one of each, in either order.
		if seen[fam] {
			errs = append(errs, field.Duplicate(famPath.Index(i), fam))
		}
		seen[fam] = true
	}

	if spec.IPFamilyPolicy != nil && !contains(ipFamilyPolicies, *spec.IPFamilyPolicy) {
		errs = append(errs, field.NotSupported(specPath.Child("ipFamilyPolicy"), spec.IPFamilyPolicy, ipFamilyPolicies))
	}

	badIPs := false
	for i, ip := range spec.ClusterIPs {
		if i == 0 && ip == corev1.ClusterIPNone {
			if len(spec.ClusterIPs) > 1 {
				badIPs = true
				errs = append(errs, field.Invalid(ipsPath, spec.ClusterIPs, "'None' must be the first and only value"))
			}
			continue
		}
		if ipErrs := utilvalidation.IsValidIP(ipsPath.Index(i), ip); len(ipErrs) != 0 {
			badIPs = true
			errs = append(errs, ipErrs...)
		}
	}
	if len(spec.ClusterIPs) > 2 {
		errs = append(errs, field.Invalid(ipsPath, spec.ClusterIPs, "may only hold up to 2 values"))
	}
	// Family checks of bad addresses would only add noise.
	if badIPs {
		return errs
	}

	if len(spec.ClusterIPs) > 1 {
		has := map[corev1.IPFamily]bool{}
		for _, ip := range spec.ClusterIPs {
			has[familyOfIP(ip)] = true
		}
		if !has[corev1.IPv4Protocol] || !has[corev1.IPv6Protocol] {
			errs = append(errs, field.Invalid(ipsPath, spec.ClusterIPs, "may specify no more than one IP for each IP family"))
		}
	}

	if !isHeadless(svc) {
		for i, ip := range spec.ClusterIPs {
			if i >= len(spec.IPFamilies) {
				break
			}
			if want := spec.IPFamilies[i]; (want == corev1.IPv4Protocol || want == corev1.IPv6Protocol) && familyOfIP(ip) != want {
				errs = append(errs, field.Invalid(ipsPath.Index(i), ip,
					fmt.Sprintf("expected an %s value as indicated by `ipFamilies[%d]`", want, i)))
			}
		}
	}
	return errs
}

// validateUpgradeDowngradeClusterIPs allows adding or removing the
// secondary cluster IP, not changing the primary one.
func validateUpgradeDowngradeClusterIPs(oldSvc, svc *core.Service) field.ErrorList {
	if !needsClusterIP(svc) || !needsClusterIP(oldSvc) || (isHeadless(oldSvc) && isHeadless(svc)) {
		return nil
	}
	var errs field.ErrorList
	newIPs, oldIPs := svc.Spec.ClusterIPs, oldSvc.Spec.ClusterIPs
	ipsPath := field.NewPath("spec", "clusterIPs")
	switch {
	case len(oldIPs) == len(newIPs):
		for i, ip := range oldIPs {
			if ip != newIPs[i] {
				errs = append(errs, field.Invalid(ipsPath.Index(i), newIPs, "may not change once set"))
			}
		}
	case len(oldIPs) > len(newIPs):
		if len(newIPs) == 0 {
			errs = append(errs, field.Invalid(ipsPath.Index(0), newIPs, "primary clusterIP can not be unset"))
		} else if newIPs[0] != oldIPs[0] {
			errs = append(errs, field.Invalid(ipsPath.Index(0), newIPs, "may not change once set"))
		}
		if len(newIPs) == 1 && policyOf(svc) != corev1.IPFamilyPolicySingleStack {
			errs = append(errs, field.Invalid(field.NewPath("spec", "ipFamilyPolicy"), svc.Spec.IPFamilyPolicy,
				"must be set to 'SingleStack' when releasing the secondary clusterIP"))
		}
	default: // added: the primary stays
		if len(oldIPs) > 0 && newIPs[0] != oldIPs[0] {
			errs = append(errs, field.Invalid(ipsPath.Index(0), newIPs, "may not change once set"))
		}
	}
	return errs
}

// validateUpgradeDowngradeIPFamilies allows adding or removing the
// secondary family, not changing the primary one, except for headless
// Services, which have no cluster IP to keep.
func validateUpgradeDowngradeIPFamilies(oldSvc, svc *core.Service) field.ErrorList {
	if !needsClusterIP(svc) || !needsClusterIP(oldSvc) || isHeadless(oldSvc) || isHeadless(svc) {
		return nil
	}
	var errs field.ErrorList
	newFams, oldFams := svc.Spec.IPFamilies, oldSvc.Spec.IPFamilies
	// Kubernetes reports every change at index 0.
	primaryPath := field.NewPath("spec", "ipFamilies").Index(0)
	switch {
	case len(oldFams) == len(newFams):
		for i, f := range oldFams {
			if f != newFams[i] {
				errs = append(errs, field.Invalid(primaryPath, newFams, "may not change once set"))
			}
		}
	case len(oldFams) > len(newFams):
		if len(svc.Spec.ClusterIPs) == 0 {
			errs = append(errs, field.Invalid(primaryPath, newFams, "primary ipFamily can not be unset"))
		}
		if len(newFams) > 0 && newFams[0] != oldFams[0] {
			errs = append(errs, field.Invalid(primaryPath, svc.Spec.ClusterIPs, "may not change once set"))
		}
		if len(newFams) == 1 && policyOf(svc) != corev1.IPFamilyPolicySingleStack {
			errs = append(errs, field.Invalid(field.NewPath("spec", "ipFamilyPolicy"), svc.Spec.IPFamilyPolicy,
				"must be set to 'SingleStack' when releasing the secondary ipFamily"))
		}
	default:
		if len(oldFams) > 0 && len(newFams) > 0 && newFams[0] != oldFams[0] {
			errs = append(errs, field.Invalid(primaryPath, svc.Spec.ClusterIPs, "may not change once set"))
		}
	}
	return errs
}

// validateLegacyIPFamily checks the 1.16 spec.ipFamily, with the messages
// Kubernetes 1.16 used. After Prepare it either equals ipFamilies[0] or is
// a value the client set that could not be mapped; the checks say why, the
// first that applies:
//
//   - it changed (immutable, except to or from ExternalName and for
//     headless Services, whose families may change);
//   - the cluster does not serve the family;
//   - it contradicts the clusterIP;
//   - it contradicts ipFamilies.
//
// A stored value the client sent back unchanged is accepted as it is, even
// if the cluster since lost that family.
func validateLegacyIPFamily(svc, old *core.Service, cfg Config) field.ErrorList {
	if svc.Spec.IPFamily == nil {
		return nil
	}
	path := field.NewPath("spec", "ipFamily")
	if !needsClusterIP(svc) {
		return field.ErrorList{field.Forbidden(path, "may not be set for ExternalName services")}
	}
	fam := *svc.Spec.IPFamily
	if old != nil && needsClusterIP(old) && old.Spec.IPFamily != nil {
		if *old.Spec.IPFamily == fam {
			return nil
		}
		if !isHeadless(old) && !isHeadless(svc) {
			return apivalidation.ValidateImmutableField(fam, *old.Spec.IPFamily, path)
		}
	}

	spec := &svc.Spec
	headlessAnyFamily := spec.ClusterIP == corev1.ClusterIPNone && len(spec.Selector) == 0 &&
		len(spec.IPFamilies) > 0 && spec.IPFamilies[0] == fam
	if !cfg.Has(fam) && !headlessAnyFamily {
		return field.ErrorList{field.Invalid(path, fam, "only the following families are allowed: "+cfg.familyList())}
	}
	if ip, err := netip.ParseAddr(spec.ClusterIP); err == nil {
		if got := familyOfAddr(ip); got != fam {
			return field.ErrorList{field.Invalid(path, fam, fmt.Sprintf("does not match %s cluster IP", got))}
		}
	}
	if len(spec.IPFamilies) > 0 && spec.IPFamilies[0] != fam {
		return field.ErrorList{field.Invalid(path, fam, fmt.Sprintf("does not match `ipFamilies[0]` (%s)", spec.IPFamilies[0]))}
	}
	return nil
}

// validateNonSpecialIP refuses addresses that cannot serve as an external
// IP: unspecified, loopback and link-local ones.
func validateNonSpecialIP(ip string, fldPath *field.Path) field.ErrorList {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return field.ErrorList{field.Invalid(fldPath, ip, "must be a valid IP address")}
	}
	var errs field.ErrorList
	if a.IsUnspecified() {
		errs = append(errs, field.Invalid(fldPath, ip, fmt.Sprintf("may not be unspecified (%v)", ip)))
	}
	if a.IsLoopback() {
		errs = append(errs, field.Invalid(fldPath, ip, "may not be in the loopback range (127.0.0.0/8, ::1/128)"))
	}
	if a.IsLinkLocalUnicast() {
		errs = append(errs, field.Invalid(fldPath, ip, "may not be in the link-local range (169.254.0.0/16, fe80::/10)"))
	}
	if a.IsLinkLocalMulticast() {
		errs = append(errs, field.Invalid(fldPath, ip, "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"))
	}
	return errs
}

func validateDNS1123Subdomain(value string, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range utilvalidation.IsDNS1123Subdomain(value) {
		errs = append(errs, field.Invalid(fldPath, value, msg))
	}
	return errs
}

func validateQualifiedName(value string, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range content.IsLabelKey(value) {
		errs = append(errs, field.Invalid(fldPath, value, msg))
	}
	return errs
}

func contains[T comparable](list []T, v T) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
