package core

import (
	"net/netip"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/duet-net/duet/internal/netaddr"
)

// validateNodeSpec checks podCIDRs as Kubernetes does: valid CIDRs, at
// most one per family, and podCIDR equal to podCIDRs[0].
func validateNodeSpec(node *corev1.Node) field.ErrorList {
	var errs field.ErrorList
	path := field.NewPath("spec", "podCIDRs")
	fams := map[netaddr.Family]bool{}
	for i, c := range node.Spec.PodCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			errs = append(errs, field.Invalid(path.Index(i), c, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"))
			continue
		}
		if p.Masked() != p {
			errs = append(errs, field.Invalid(path.Index(i), c, "must be a valid CIDR value with no host bits set (the network is "+p.Masked().String()+")"))
		}
		fams[netaddr.FamilyOf(p.Addr())] = true
	}
	if len(node.Spec.PodCIDRs) > 2 || (len(node.Spec.PodCIDRs) == 2 && len(fams) != 2) {
		errs = append(errs, field.Invalid(path, node.Spec.PodCIDRs, "may specify no more than one CIDR for each IP family"))
	}
	if len(node.Spec.PodCIDRs) > 0 && node.Spec.PodCIDR != node.Spec.PodCIDRs[0] {
		errs = append(errs, field.Invalid(field.NewPath("spec", "podCIDR"), node.Spec.PodCIDR, "must match spec.podCIDRs[0]"))
	}
	return errs
}

// validateNodeUpdate is validateNodeSpec plus what may not change.
// dropsFamily tells whether a shrink of podCIDRs is the one allowed: the
// server's own controller dropping a family the cluster no longer has
// (see podCIDRFamilyDrop).
func validateNodeUpdate(node, old *corev1.Node, dropsFamily bool) field.ErrorList {
	errs := validateNodeSpec(node)
	// podCIDRs may go from unset to set (the node IPAM controller) or grow
	// by the missing family, never change.
	if len(old.Spec.PodCIDRs) > 0 && !dropsFamily {
		changed := len(node.Spec.PodCIDRs) < len(old.Spec.PodCIDRs)
		for i := range old.Spec.PodCIDRs {
			if i < len(node.Spec.PodCIDRs) && node.Spec.PodCIDRs[i] != old.Spec.PodCIDRs[i] {
				changed = true
			}
		}
		if changed {
			errs = append(errs, field.Forbidden(field.NewPath("spec", "podCIDRs"), `node updates may not change podCIDR except from "" to valid`))
		}
	}
	if old.Spec.ProviderID != "" && node.Spec.ProviderID != old.Spec.ProviderID {
		errs = append(errs, field.Forbidden(field.NewPath("spec", "providerID"), "node updates may not change providerID except from \"\" to valid"))
	}
	return errs
}

// syncPodCIDR keeps the singular and plural fields in step, as
// Kubernetes' v1 conversion does.
func syncPodCIDR(node *corev1.Node) {
	if len(node.Spec.PodCIDRs) == 0 && node.Spec.PodCIDR != "" {
		node.Spec.PodCIDRs = []string{node.Spec.PodCIDR}
	}
	if len(node.Spec.PodCIDRs) > 0 && node.Spec.PodCIDR == "" {
		node.Spec.PodCIDR = node.Spec.PodCIDRs[0]
	}
}

// validatePodIPs checks status.podIPs: valid, at most one per family, no
// duplicates, and podIP equal to podIPs[0].
func validatePodIPs(pod *corev1.Pod) field.ErrorList {
	var errs field.ErrorList
	path := field.NewPath("status", "podIPs")
	fams := map[netaddr.Family]bool{}
	seen := sets.New[string]()
	for i, ip := range pod.Status.PodIPs {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil || a.Zone() != "" {
			errs = append(errs, field.Invalid(path.Index(i), ip.IP, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))
			continue
		}
		if seen.Has(a.String()) {
			errs = append(errs, field.Duplicate(path.Index(i), ip.IP))
		}
		seen.Insert(a.String())
		fams[netaddr.FamilyOf(a)] = true
	}
	if len(pod.Status.PodIPs) > 2 || (len(pod.Status.PodIPs) == 2 && len(fams) != 2) {
		errs = append(errs, field.Invalid(path, pod.Status.PodIPs, "may specify no more than one IP for each IP family"))
	}
	if len(pod.Status.PodIPs) > 0 && pod.Status.PodIP != pod.Status.PodIPs[0].IP {
		errs = append(errs, field.Invalid(field.NewPath("status", "podIP"), pod.Status.PodIP, "must match status.podIPs[0]"))
	}
	return errs
}

// syncPodIP keeps status.podIP and status.podIPs in step.
func syncPodIP(pod *corev1.Pod) {
	if len(pod.Status.PodIPs) == 0 && pod.Status.PodIP != "" {
		pod.Status.PodIPs = []corev1.PodIP{{IP: pod.Status.PodIP}}
	}
	if len(pod.Status.PodIPs) > 0 && pod.Status.PodIP == "" {
		pod.Status.PodIP = pod.Status.PodIPs[0].IP
	}
}

// validatePodSpec is the part of Kubernetes' pod validation that matters to
// a networking system: containers named and unique, ports valid.
func validatePodSpec(spec *corev1.PodSpec) field.ErrorList {
	var errs field.ErrorList
	path := field.NewPath("spec")
	if len(spec.Containers) == 0 {
		errs = append(errs, field.Required(path.Child("containers"), ""))
	}
	names := sets.New[string]()
	check := func(p *field.Path, c *corev1.Container) {
		for _, msg := range validation.IsDNS1123Label(c.Name) {
			errs = append(errs, field.Invalid(p.Child("name"), c.Name, msg))
		}
		if names.Has(c.Name) {
			errs = append(errs, field.Duplicate(p.Child("name"), c.Name))
		}
		names.Insert(c.Name)
		for j, port := range c.Ports {
			pp := p.Child("ports").Index(j)
			for _, msg := range validation.IsValidPortNum(int(port.ContainerPort)) {
				errs = append(errs, field.Invalid(pp.Child("containerPort"), port.ContainerPort, msg))
			}
			if port.Name != "" {
				for _, msg := range validation.IsValidPortName(port.Name) {
					errs = append(errs, field.Invalid(pp.Child("name"), port.Name, msg))
				}
			}
			switch port.Protocol {
			case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
			default:
				errs = append(errs, field.NotSupported(pp.Child("protocol"), port.Protocol, []string{"SCTP", "TCP", "UDP"}))
			}
		}
	}
	for i := range spec.InitContainers {
		check(path.Child("initContainers").Index(i), &spec.InitContainers[i])
	}
	for i := range spec.Containers {
		check(path.Child("containers").Index(i), &spec.Containers[i])
	}
	switch spec.RestartPolicy {
	case corev1.RestartPolicyAlways, corev1.RestartPolicyOnFailure, corev1.RestartPolicyNever:
	default:
		errs = append(errs, field.NotSupported(path.Child("restartPolicy"), spec.RestartPolicy, []string{"Always", "OnFailure", "Never"}))
	}
	if spec.NodeName != "" {
		for _, msg := range apivalidation.NameIsDNSSubdomain(spec.NodeName, false) {
			errs = append(errs, field.Invalid(path.Child("nodeName"), spec.NodeName, msg))
		}
	}
	return errs
}

// validatePodSpecUpdate allows what Kubernetes allows on a running pod
// (images, activeDeadlineSeconds, added tolerations) plus binding: nodeName
// from empty to a node.
func validatePodSpecUpdate(spec, old *corev1.PodSpec) field.ErrorList {
	errs := validatePodSpec(spec)
	mungedOld := old.DeepCopy()
	mungedNew := spec.DeepCopy()
	for i := range mungedNew.Containers {
		if i < len(mungedOld.Containers) {
			mungedOld.Containers[i].Image = mungedNew.Containers[i].Image
		}
	}
	for i := range mungedNew.InitContainers {
		if i < len(mungedOld.InitContainers) {
			mungedOld.InitContainers[i].Image = mungedNew.InitContainers[i].Image
		}
	}
	mungedOld.ActiveDeadlineSeconds = mungedNew.ActiveDeadlineSeconds
	if len(mungedNew.Tolerations) >= len(mungedOld.Tolerations) {
		mungedOld.Tolerations = mungedNew.Tolerations
	}
	if old.NodeName == "" {
		mungedOld.NodeName = mungedNew.NodeName
	}
	if !reflect.DeepEqual(mungedOld, mungedNew) {
		errs = append(errs, field.Forbidden(field.NewPath("spec"), "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.nodeName` (only from empty)"))
	}
	return errs
}
