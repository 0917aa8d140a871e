// Package defaulttolerations is Duet's DefaultTolerationSeconds admission
// plugin, with Kubernetes' behaviour: a pod created without a toleration
// of the NoExecute taints node.kubernetes.io/not-ready and
// node.kubernetes.io/unreachable gets one of each, for 300 seconds by
// default, so that its pods leave a node that stopped reporting five
// minutes after the node lifecycle controller tainted it, and not at
// once. A toleration of the key with no effect, or of every key, counts as
// one the pod has.
//
// Unlike Kubernetes' plugin it acts on creation only: tolerations of a
// running pod stay what its creator and this plugin made them.
package defaulttolerations

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apiserver/pkg/admission"
)

// PluginName is Kubernetes' name of the plugin.
const PluginName = "DefaultTolerationSeconds"

// DefaultSeconds is Kubernetes' default of both
// --default-not-ready-toleration-seconds and
// --default-unreachable-toleration-seconds.
const DefaultSeconds = 300

// Plugin adds the default tolerations.
type Plugin struct {
	*admission.Handler
	notReady, unreachable corev1.Toleration
}

var _ admission.MutationInterface = &Plugin{}

// New returns the plugin with the given toleration seconds.
func New(notReadySeconds, unreachableSeconds int64) *Plugin {
	tol := func(key string, s int64) corev1.Toleration {
		return corev1.Toleration{Key: key, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &s}
	}
	return &Plugin{
		Handler:     admission.NewHandler(admission.Create),
		notReady:    tol(corev1.TaintNodeNotReady, notReadySeconds),
		unreachable: tol(corev1.TaintNodeUnreachable, unreachableSeconds),
	}
}

// Admit adds the tolerations the pod lacks.
func (p *Plugin) Admit(_ context.Context, a admission.Attributes, _ admission.ObjectInterfaces) error {
	if a.GetResource().GroupResource() != corev1.Resource("pods") || a.GetSubresource() != "" {
		return nil
	}
	pod, ok := a.GetObject().(*corev1.Pod)
	if !ok {
		return nil
	}
	for _, t := range []corev1.Toleration{p.notReady, p.unreachable} {
		if !tolerates(pod.Spec.Tolerations, t.Key) {
			t.TolerationSeconds = ptrCopy(t.TolerationSeconds)
			pod.Spec.Tolerations = append(pod.Spec.Tolerations, t)
		}
	}
	return nil
}

// tolerates tells whether one of tolerations already covers key's
// NoExecute taint, by naming the key (or no key) with NoExecute or no
// effect.
func tolerates(tolerations []corev1.Toleration, key string) bool {
	for _, t := range tolerations {
		if (t.Key == key || t.Key == "") && (t.Effect == corev1.TaintEffectNoExecute || t.Effect == "") {
			return true
		}
	}
	return false
}

func ptrCopy(v *int64) *int64 {
	c := *v
	return &c
}
