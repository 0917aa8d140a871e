package apiserver

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	kubeletapis "k8s.io/kubelet/pkg/apis"

	"github.com/duet-net/duet/internal/nodegraph"
	"github.com/duet-net/duet/internal/pki"
)

// Node identities are client certificates with CN system:node:NAME in the
// group system:nodes, one per agent. Like Kubernetes' Node authorizer and
// NodeRestriction admission together, they may read what an agent needs
// and change only their own Node, their own Lease, and the pods bound to
// them.

const nodeUserPrefix = pki.NodeUserPrefix

// NodeName returns the node a user is, if it is one.
func NodeName(u user.Info) (string, bool) {
	if u == nil || !strings.HasPrefix(u.GetName(), nodeUserPrefix) {
		return "", false
	}
	for _, g := range u.GetGroups() {
		if g == user.NodesGroup {
			return strings.TrimPrefix(u.GetName(), nodeUserPrefix), true
		}
	}
	return "", false
}

var nodeReadable = map[string]bool{
	"nodes": true, "pods": true, "services": true, "endpoints": true, "endpointslices": true,
	"namespaces": true, "leases": true, "events": true, "ipaddresses": true, "servicecidrs": true,
	"clustercidrs": true,
}

// nodeGraphWait is how long a node's read of an object its pods refer to
// waits for the node graph to learn of a pod just bound.
var nodeGraphWait = time.Second

// authorizeNode decides requests from node identities. Secrets,
// ConfigMaps and ServiceAccounts are readable one by one (get, or a list
// or watch of metadata.name=NAME, as kubelets watch them), and only those
// the pods bound to the node refer to, as graph knows them.
func authorizeNode(ctx context.Context, graph *nodegraph.Graph, node string, a authorizer.Attributes) (authorizer.Decision, string) {
	if !a.IsResourceRequest() {
		return authorizer.DecisionNoOpinion, ""
	}
	res, sub, verb, name := a.GetResource(), a.GetSubresource(), a.GetVerb(), a.GetName()
	if a.GetAPIGroup() == "" && res == nodegraph.ServiceAccounts && sub == "token" && verb == "create" {
		// Tokens for the ServiceAccounts of its pods; admission checks
		// the token is bound to one of them.
		if ok, why := graph.Allowed(ctx, node, nodegraph.Ref{Resource: res, Namespace: a.GetNamespace(), Name: name}, nodeGraphWait); !ok {
			return authorizer.DecisionDeny, fmt.Sprintf("node %q may not create a token for serviceaccount %s/%s: %s", node, a.GetNamespace(), name, why)
		}
		return authorizer.DecisionAllow, ""
	}
	if a.GetAPIGroup() == "" && (res == nodegraph.Secrets || res == nodegraph.ConfigMaps || res == nodegraph.ServiceAccounts) {
		if sub != "" || (verb != "get" && verb != "list" && verb != "watch") {
			return authorizer.DecisionDeny, fmt.Sprintf("node %q may not %s %s", node, verb, describe(a))
		}
		if name == "" {
			return authorizer.DecisionDeny, fmt.Sprintf("node %q may only %s %s by name (a fieldSelector of metadata.name for list and watch)", node, verb, res)
		}
		if ok, why := graph.Allowed(ctx, node, nodegraph.Ref{Resource: res, Namespace: a.GetNamespace(), Name: name}, nodeGraphWait); !ok {
			return authorizer.DecisionDeny, fmt.Sprintf("node %q may not %s %s: %s", node, verb, describe(a), why)
		}
		return authorizer.DecisionAllow, ""
	}
	switch verb {
	case "get", "list", "watch":
		if nodeReadable[res] && sub == "" || res == "nodes" && sub == "status" || res == "pods" && sub == "status" {
			return authorizer.DecisionAllow, ""
		}
	case "create":
		switch {
		case res == "events":
			return authorizer.DecisionAllow, ""
		case res == "nodes" && sub == "":
			// The name is in the body; admission checks it.
			return authorizer.DecisionAllow, ""
		case res == "leases" && a.GetNamespace() == corev1.NamespaceNodeLease:
			return authorizer.DecisionAllow, ""
		}
	case "update", "patch":
		switch {
		case res == "nodes" && name == node:
			return authorizer.DecisionAllow, ""
		case res == "pods" && sub == "status":
			return authorizer.DecisionAllow, "" // admission checks the binding
		case res == "leases" && a.GetNamespace() == corev1.NamespaceNodeLease && name == node:
			return authorizer.DecisionAllow, ""
		case res == "events":
			return authorizer.DecisionAllow, ""
		}
	case "delete":
		if res == "pods" && sub == "" {
			return authorizer.DecisionAllow, "" // admission checks the binding
		}
	}
	return authorizer.DecisionDeny, fmt.Sprintf("node %q may not %s %s", node, verb, describe(a))
}

// nodeRestriction is the admission half: it sees the objects, so it checks
// what the authorizer cannot (names in bodies, pods' bindings).
type nodeRestriction struct {
	getPod func(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

func (n *nodeRestriction) Handles(op admission.Operation) bool {
	return op == admission.Create || op == admission.Update || op == admission.Delete
}

func (n *nodeRestriction) Validate(ctx context.Context, a admission.Attributes, _ admission.ObjectInterfaces) error {
	node, ok := NodeName(a.GetUserInfo())
	if !ok {
		return nil
	}
	res := a.GetResource().Resource
	forbid := func(msg string, args ...any) error {
		return admission.NewForbidden(a, fmt.Errorf("node %q is not allowed to "+msg, append([]any{node}, args...)...))
	}
	switch {
	case res == "nodes":
		if a.GetName() != node {
			return forbid("modify node %q", a.GetName())
		}
		if labels := forbiddenNodeLabels(a); len(labels) > 0 {
			return forbid("modify labels %s (only an administrator may set node-restriction.kubernetes.io/* labels, and kubernetes.io/* or k8s.io/* labels other than the kubelet's own)", strings.Join(labels, ", "))
		}
	case res == "serviceaccounts" && a.GetSubresource() == "token":
		return n.checkTokenRequest(ctx, node, a, forbid)
	case res == "leases" && a.GetOperation() == admission.Create:
		if a.GetName() != node {
			return forbid("create lease %q", a.GetName())
		}
	case res == "pods":
		pod, ok := a.GetOldObject().(*corev1.Pod)
		if !ok || pod == nil {
			var err error
			if pod, err = n.getPod(ctx, a.GetNamespace(), a.GetName()); err != nil {
				if apierrors.IsNotFound(err) {
					return nil // the store reports it
				}
				return err
			}
		}
		if pod.Spec.NodeName != node {
			return forbid("modify pod %s/%s, which is bound to %q", a.GetNamespace(), a.GetName(), pod.Spec.NodeName)
		}
		// A status write may change labels, as in Kubernetes, but a node
		// relabelling its pods could move them into or out of Services.
		if cur, ok := a.GetObject().(*corev1.Pod); ok && a.GetSubresource() == "status" && !maps.Equal(cur.Labels, pod.Labels) {
			return forbid("change the labels of pod %s/%s through its status", a.GetNamespace(), a.GetName())
		}
	}
	return nil
}

// checkTokenRequest lets a node have tokens only bound to a pod of its
// own, named with its UID, so that they die with the pod.
func (n *nodeRestriction) checkTokenRequest(ctx context.Context, node string, a admission.Attributes, forbid func(string, ...any) error) error {
	req, ok := a.GetObject().(*authenticationv1.TokenRequest)
	if !ok {
		return forbid("request a token with a %T", a.GetObject())
	}
	ref := req.Spec.BoundObjectRef
	if ref == nil || ref.Kind != "Pod" {
		return forbid("request a token that is not bound to a pod")
	}
	if ref.UID == "" {
		return forbid("request a token bound to pod %s/%s without its uid", a.GetNamespace(), ref.Name)
	}
	pod, err := n.getPod(ctx, a.GetNamespace(), ref.Name)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return forbid("request a token bound to pod %s/%s, which does not exist", a.GetNamespace(), ref.Name)
		}
		return err
	}
	if pod.UID != ref.UID {
		return forbid("request a token bound to pod %s/%s with uid %s, which is not the pod's (%s)", a.GetNamespace(), ref.Name, ref.UID, pod.UID)
	}
	if pod.Spec.NodeName != node {
		return forbid("request a token bound to pod %s/%s, which is bound to %q", a.GetNamespace(), ref.Name, pod.Spec.NodeName)
	}
	return nil
}

// forbiddenNodeLabels returns, sorted, the labels a create or update of a
// Node adds, removes or changes that a node may not touch on its own Node,
// as Kubernetes' NodeRestriction admission decides them: labels under
// node-restriction.kubernetes.io (and its subdomains) are how an
// administrator marks nodes that workloads may trust, and any other
// kubernetes.io or k8s.io label outside the set kubelets set themselves
// (kubernetes.io/hostname, topology, os and arch, and the kubelet.kubernetes.io
// and node.kubernetes.io namespaces) could steer workloads to the node,
// node-role.kubernetes.io/* among them. Other labels are the node's own.
func forbiddenNodeLabels(a admission.Attributes) []string {
	var have, had map[string]string
	if n, ok := a.GetObject().(*corev1.Node); ok {
		have = n.Labels
	}
	if n, ok := a.GetOldObject().(*corev1.Node); ok && a.GetOperation() == admission.Update {
		had = n.Labels
	}
	changed := map[string]bool{}
	for k, v := range have {
		if w, ok := had[k]; !ok || v != w {
			changed[k] = true
		}
	}
	for k := range had {
		if _, ok := have[k]; !ok {
			changed[k] = true
		}
	}
	var out []string
	for k := range changed {
		if !nodeMaySetLabel(k) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// nodeMaySetLabel reports whether a node may set label key on its own Node.
func nodeMaySetLabel(key string) bool {
	prefix, _, ok := strings.Cut(key, "/")
	if !ok {
		return true // no prefix: a user's label
	}
	under := func(domain string) bool { return prefix == domain || strings.HasSuffix(prefix, "."+domain) }
	if under(corev1.LabelNamespaceNodeRestriction) {
		return false
	}
	if under("kubernetes.io") || under("k8s.io") {
		return kubeletapis.IsKubeletLabel(key)
	}
	return true
}

var _ admission.ValidationInterface = &nodeRestriction{}
