package apiserver

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
)

// Node identities are client certificates with CN system:node:NAME in the
// group system:nodes, one per agent. Like Kubernetes' Node authorizer and
// NodeRestriction admission together, they may read what an agent needs
// and change only their own Node, their own Lease, and the pods bound to
// them.

const nodeUserPrefix = "system:node:"

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
}

// authorizeNode decides requests from node identities.
func authorizeNode(node string, a authorizer.Attributes) (authorizer.Decision, string) {
	if !a.IsResourceRequest() {
		return authorizer.DecisionNoOpinion, ""
	}
	res, sub, verb, name := a.GetResource(), a.GetSubresource(), a.GetVerb(), a.GetName()
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
	}
	return nil
}

var _ admission.ValidationInterface = &nodeRestriction{}
