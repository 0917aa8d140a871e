package scheduler

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/util/sets"
	resourcehelper "k8s.io/component-helpers/resource"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
)

// Requests that count for spreading when a container asks for none, as
// Kubernetes' scheduler counts them: otherwise any number of pods without
// requests would look free on a node.
const (
	defaultMilliCPU = 100
	defaultMemory   = 200 * 1024 * 1024
)

// hardAffinityWeight is what an existing pod's required affinity term adds
// to the score of nodes in its domain when the incoming pod matches it.
const hardAffinityWeight = 1

// resources is an amount of each resource the scheduler accounts for.
type resources struct {
	milliCPU, memory, ephemeral int64
	scalar                      map[corev1.ResourceName]int64
}

func (r *resources) add(o *resources, sign int64) {
	r.milliCPU += sign * o.milliCPU
	r.memory += sign * o.memory
	r.ephemeral += sign * o.ephemeral
	for name, v := range o.scalar {
		if r.scalar == nil {
			r.scalar = map[corev1.ResourceName]int64{}
		}
		r.scalar[name] += sign * v
		if r.scalar[name] == 0 {
			delete(r.scalar, name)
		}
	}
}

func resourcesOf(list corev1.ResourceList) resources {
	var r resources
	for name, q := range list {
		switch name {
		case corev1.ResourceCPU:
			r.milliCPU = q.MilliValue()
		case corev1.ResourceMemory:
			r.memory = q.Value()
		case corev1.ResourceEphemeralStorage:
			r.ephemeral = q.Value()
		case corev1.ResourcePods:
			// counted apart, as pods
		default:
			if isScalar(name) {
				if r.scalar == nil {
					r.scalar = map[corev1.ResourceName]int64{}
				}
				r.scalar[name] = q.Value()
			}
		}
	}
	return r
}

// isScalar tells the resources counted as whole units: extended resources
// (a domain-qualified name outside kubernetes.io) and huge pages.
func isScalar(name corev1.ResourceName) bool {
	s := string(name)
	if strings.HasPrefix(s, corev1.ResourceHugePagesPrefix) {
		return true
	}
	domain, _, ok := strings.Cut(s, "/")
	return ok && domain != "kubernetes.io" && !strings.HasSuffix(domain, ".kubernetes.io") &&
		!strings.HasPrefix(s, corev1.DefaultResourceRequestsPrefix)
}

// hostPort is one port a pod takes on its node's addresses.
type hostPort struct {
	ip       netip.Addr // the unspecified address of no family means all
	protocol corev1.Protocol
	port     int32
}

func (p hostPort) conflicts(o hostPort) bool {
	if p.port != o.port || p.protocol != o.protocol {
		return false
	}
	return !p.ip.IsValid() || !o.ip.IsValid() || p.ip.IsUnspecified() || o.ip.IsUnspecified() || p.ip == o.ip
}

// term is one pod (anti-)affinity term, parsed.
type term struct {
	selector    labels.Selector
	namespaces  sets.Set[string]
	nsSelector  labels.Selector // nil: only the namespaces listed
	topologyKey string
	weight      int64
}

// matches tells whether pod is among the pods the term selects; nsLabels
// gives a namespace's labels, for namespace selectors.
func (t *term) matches(pod *corev1.Pod, nsLabels func(string) labels.Set) bool {
	if !t.namespaces.Has(pod.Namespace) && (t.nsSelector == nil || !t.nsSelector.Matches(nsLabels(pod.Namespace))) {
		return false
	}
	return t.selector.Matches(labels.Set(pod.Labels))
}

// podInfo is what scheduling reads of a pod, computed once per version.
type podInfo struct {
	pod *corev1.Pod
	key string
	// requests counts what the pod reserves on its node; nonZero is the
	// cpu and memory it counts for spreading.
	requests         resources
	nonZeroCPU       int64
	nonZeroMemory    int64
	ports            []hostPort
	nodeAffinity     nodeaffinity.RequiredNodeAffinity
	preferredNodes   *nodeaffinity.PreferredSchedulingTerms
	affinity         []term // required
	antiAffinity     []term // required
	prefAffinity     []term
	prefAntiAffinity []term
	// err is why the pod's own spec cannot be scheduled (an invalid
	// selector): it fits no node.
	err error
}

func (p *podInfo) hasAffinity() bool {
	return len(p.affinity)+len(p.antiAffinity)+len(p.prefAffinity)+len(p.prefAntiAffinity) > 0
}

func (p *podInfo) hasRequiredAffinity() bool {
	return len(p.affinity)+len(p.antiAffinity) > 0
}

// newPodInfo parses pod's scheduling constraints.
func newPodInfo(pod *corev1.Pod) *podInfo {
	p := &podInfo{pod: pod, key: pod.Namespace + "/" + pod.Name, nodeAffinity: nodeaffinity.GetRequiredNodeAffinity(pod)}
	withLimits := requestsDefaultedFromLimits(pod)
	p.requests = resourcesOf(resourcehelper.PodRequests(withLimits, resourcehelper.PodResourcesOptions{}))
	nonZero := resourcehelper.PodRequests(withLimits, resourcehelper.PodResourcesOptions{
		NonMissingContainerRequests: corev1.ResourceList{
			corev1.ResourceCPU:    *resource.NewMilliQuantity(defaultMilliCPU, resource.DecimalSI),
			corev1.ResourceMemory: *resource.NewQuantity(defaultMemory, resource.BinarySI),
		},
	})
	p.nonZeroCPU = nonZero.Cpu().MilliValue()
	p.nonZeroMemory = nonZero.Memory().Value()
	p.ports = hostPortsOf(pod)

	var errs []error
	if a := pod.Spec.Affinity; a != nil {
		if na := a.NodeAffinity; na != nil && len(na.PreferredDuringSchedulingIgnoredDuringExecution) > 0 {
			pref, err := nodeaffinity.NewPreferredSchedulingTerms(na.PreferredDuringSchedulingIgnoredDuringExecution)
			if err != nil {
				errs = append(errs, fmt.Errorf("preferred node affinity: %w", err))
			} else {
				p.preferredNodes = pref
			}
		}
		parse := func(what string, terms []corev1.PodAffinityTerm, weights []int32) []term {
			var out []term
			for i := range terms {
				t, err := parseTerm(pod, &terms[i])
				if err != nil {
					errs = append(errs, fmt.Errorf("%s term %d: %w", what, i, err))
					continue
				}
				if weights != nil {
					t.weight = int64(weights[i])
				}
				out = append(out, t)
			}
			return out
		}
		if pa := a.PodAffinity; pa != nil {
			p.affinity = parse("pod affinity", pa.RequiredDuringSchedulingIgnoredDuringExecution, nil)
			terms, weights := weighted(pa.PreferredDuringSchedulingIgnoredDuringExecution)
			p.prefAffinity = parse("preferred pod affinity", terms, weights)
		}
		if pa := a.PodAntiAffinity; pa != nil {
			p.antiAffinity = parse("pod anti-affinity", pa.RequiredDuringSchedulingIgnoredDuringExecution, nil)
			terms, weights := weighted(pa.PreferredDuringSchedulingIgnoredDuringExecution)
			p.prefAntiAffinity = parse("preferred pod anti-affinity", terms, weights)
		}
	}
	if len(errs) > 0 {
		p.err = errs[0]
	}
	return p
}

func weighted(in []corev1.WeightedPodAffinityTerm) ([]corev1.PodAffinityTerm, []int32) {
	terms := make([]corev1.PodAffinityTerm, len(in))
	weights := make([]int32, len(in))
	for i, w := range in {
		terms[i], weights[i] = w.PodAffinityTerm, w.Weight
	}
	return terms, weights
}

// parseTerm turns an API term into selectors. matchLabelKeys and
// mismatchLabelKeys add requirements on the owning pod's own label values,
// which Kubernetes' API server writes into the selector at creation and
// Duet's does not.
func parseTerm(owner *corev1.Pod, in *corev1.PodAffinityTerm) (term, error) {
	sel, err := metav1.LabelSelectorAsSelector(in.LabelSelector)
	if err != nil {
		return term{}, fmt.Errorf("labelSelector: %w", err)
	}
	if in.LabelSelector != nil {
		for _, keys := range []struct {
			keys []string
			op   selection.Operator
		}{{in.MatchLabelKeys, selection.In}, {in.MismatchLabelKeys, selection.NotIn}} {
			for _, k := range keys.keys {
				v, ok := owner.Labels[k]
				if !ok {
					continue
				}
				r, err := labels.NewRequirement(k, keys.op, []string{v})
				if err != nil {
					return term{}, fmt.Errorf("label key %q: %w", k, err)
				}
				sel = sel.Add(*r)
			}
		}
	}
	t := term{selector: sel, namespaces: sets.New(in.Namespaces...), topologyKey: in.TopologyKey}
	if in.NamespaceSelector != nil {
		if t.nsSelector, err = metav1.LabelSelectorAsSelector(in.NamespaceSelector); err != nil {
			return term{}, fmt.Errorf("namespaceSelector: %w", err)
		}
	} else if len(in.Namespaces) == 0 {
		t.namespaces.Insert(owner.Namespace)
	}
	if t.topologyKey == "" {
		return term{}, fmt.Errorf("topologyKey: must not be empty")
	}
	return t, nil
}

// requestsDefaultedFromLimits returns pod, or a copy whose containers
// request what they limit where they request nothing, as Kubernetes'
// defaulting writes into the stored pod.
func requestsDefaultedFromLimits(pod *corev1.Pod) *corev1.Pod {
	needs := func(cs []corev1.Container) bool {
		for i := range cs {
			for name := range cs[i].Resources.Limits {
				if _, ok := cs[i].Resources.Requests[name]; !ok {
					return true
				}
			}
		}
		return false
	}
	if !needs(pod.Spec.Containers) && !needs(pod.Spec.InitContainers) {
		return pod
	}
	fix := func(cs []corev1.Container) []corev1.Container {
		out := make([]corev1.Container, len(cs))
		for i, c := range cs {
			out[i] = c
			if len(c.Resources.Limits) == 0 {
				continue
			}
			req := corev1.ResourceList{}
			for name, q := range c.Resources.Limits {
				req[name] = q
			}
			for name, q := range c.Resources.Requests {
				req[name] = q
			}
			out[i].Resources.Requests = req
		}
		return out
	}
	cp := *pod
	cp.Spec.Containers = fix(pod.Spec.Containers)
	cp.Spec.InitContainers = fix(pod.Spec.InitContainers)
	return &cp
}

// hostPortsOf lists the node ports pod takes: its containers' hostPorts,
// and on the host network every container port.
func hostPortsOf(pod *corev1.Pod) []hostPort {
	var out []hostPort
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			for _, p := range c.Ports {
				port := p.HostPort
				if port == 0 && pod.Spec.HostNetwork {
					port = p.ContainerPort
				}
				if port <= 0 {
					continue
				}
				hp := hostPort{protocol: p.Protocol, port: port}
				if hp.protocol == "" {
					hp.protocol = corev1.ProtocolTCP
				}
				if ip, err := netip.ParseAddr(p.HostIP); err == nil {
					hp.ip = ip
				}
				out = append(out, hp)
			}
		}
	}
	return out
}
