package core

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	registry "github.com/duet-net/duet/internal/registry/generic"
)

// nodeTable is kubectl's node table, plus the pod CIDRs of both families.
func nodeTable() *registry.Table {
	return registry.NewTable(
		registry.Column{Name: "Status", Type: "string", Cell: func(o runtime.Object) any { return nodeStatus(o.(*corev1.Node)) }},
		registry.Column{Name: "Roles", Type: "string", Cell: func(o runtime.Object) any { return nodeRoles(o.(*corev1.Node)) }},
		registry.AgeColumn(),
		registry.Column{Name: "Version", Type: "string", Cell: func(o runtime.Object) any { return o.(*corev1.Node).Status.NodeInfo.KubeletVersion }},
		registry.Column{Name: "Internal-IP", Type: "string", Priority: 1, Cell: func(o runtime.Object) any {
			return nodeAddresses(o.(*corev1.Node), corev1.NodeInternalIP)
		}},
		registry.Column{Name: "External-IP", Type: "string", Priority: 1, Cell: func(o runtime.Object) any {
			return nodeAddresses(o.(*corev1.Node), corev1.NodeExternalIP)
		}},
		registry.Column{Name: "Pod-CIDRs", Type: "string", Priority: 1, Cell: func(o runtime.Object) any {
			return orNone(strings.Join(o.(*corev1.Node).Spec.PodCIDRs, ","))
		}},
		registry.Column{Name: "OS-Image", Type: "string", Priority: 1, Cell: func(o runtime.Object) any { return orUnknown(o.(*corev1.Node).Status.NodeInfo.OSImage) }},
		registry.Column{Name: "Kernel-Version", Type: "string", Priority: 1, Cell: func(o runtime.Object) any { return orUnknown(o.(*corev1.Node).Status.NodeInfo.KernelVersion) }},
	)
}

func nodeStatus(n *corev1.Node) string {
	status := "Unknown"
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			status = "NotReady"
			if c.Status == corev1.ConditionTrue {
				status = "Ready"
			}
		}
	}
	if n.Spec.Unschedulable {
		status += ",SchedulingDisabled"
	}
	return status
}

func nodeRoles(n *corev1.Node) string {
	var roles []string
	for k := range n.Labels {
		if r, ok := strings.CutPrefix(k, "node-role.kubernetes.io/"); ok && r != "" {
			roles = append(roles, r)
		}
	}
	sort.Strings(roles)
	return orNone(strings.Join(roles, ","))
}

// nodeAddresses lists every address of the type, both families.
func nodeAddresses(n *corev1.Node, t corev1.NodeAddressType) string {
	var out []string
	for _, a := range n.Status.Addresses {
		if a.Type == t {
			out = append(out, a.Address)
		}
	}
	return orNone(strings.Join(out, ","))
}

// podTable is kubectl's pod table; IP shows every pod IP, primary first.
func podTable() *registry.Table {
	return registry.NewTable(
		registry.Column{Name: "Ready", Type: "string", Cell: func(o runtime.Object) any {
			p := o.(*corev1.Pod)
			ready := 0
			for _, cs := range p.Status.ContainerStatuses {
				if cs.Ready {
					ready++
				}
			}
			return fmt.Sprintf("%d/%d", ready, len(p.Spec.Containers))
		}},
		registry.Column{Name: "Status", Type: "string", Cell: func(o runtime.Object) any { return podStatus(o.(*corev1.Pod)) }},
		registry.Column{Name: "Restarts", Type: "string", Cell: func(o runtime.Object) any {
			n := int32(0)
			for _, cs := range o.(*corev1.Pod).Status.ContainerStatuses {
				n += cs.RestartCount
			}
			return fmt.Sprint(n)
		}},
		registry.AgeColumn(),
		registry.Column{Name: "IP", Type: "string", Priority: 1, Cell: func(o runtime.Object) any {
			var ips []string
			for _, ip := range o.(*corev1.Pod).Status.PodIPs {
				ips = append(ips, ip.IP)
			}
			return orNone(strings.Join(ips, ","))
		}},
		registry.Column{Name: "Node", Type: "string", Priority: 1, Cell: func(o runtime.Object) any { return orNone(o.(*corev1.Pod).Spec.NodeName) }},
	)
}

func podStatus(p *corev1.Pod) string {
	if p.DeletionTimestamp != nil {
		return "Terminating"
	}
	if p.Status.Reason != "" {
		return p.Status.Reason
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			return w.Reason
		}
		if t := cs.State.Terminated; t != nil && t.Reason != "" && p.Status.Phase != corev1.PodSucceeded {
			return t.Reason
		}
	}
	if p.Status.Phase == corev1.PodSucceeded {
		return "Completed"
	}
	return string(p.Status.Phase)
}

func eventTable() *registry.Table {
	return registry.NewTable(
		registry.Column{Name: "Type", Type: "string", Cell: func(o runtime.Object) any { return o.(*corev1.Event).Type }},
		registry.Column{Name: "Reason", Type: "string", Cell: func(o runtime.Object) any { return o.(*corev1.Event).Reason }},
		registry.Column{Name: "Object", Type: "string", Cell: func(o runtime.Object) any {
			e := o.(*corev1.Event)
			return strings.ToLower(e.InvolvedObject.Kind) + "/" + e.InvolvedObject.Name
		}},
		registry.Column{Name: "Message", Type: "string", Cell: func(o runtime.Object) any { return o.(*corev1.Event).Message }},
	)
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return "<unknown>"
	}
	return s
}
