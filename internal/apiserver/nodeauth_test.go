package apiserver

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/duet-net/duet/internal/nodegraph"
)

func nodeUser(name string) user.Info {
	return &user.DefaultInfo{Name: nodeUserPrefix + name, Groups: []string{user.NodesGroup, user.AllAuthenticated}}
}

func TestNodeAuthorization(t *testing.T) {
	authz := newAuthorizer(nodegraph.New())
	tests := []struct {
		name                             string
		verb, ns, resource, sub, objName string
		allow                            bool
	}{
		{"a node reads pods", "list", "", "pods", "", "", true},
		{"a node watches services", "watch", "", "services", "", "", true},
		{"a node reads endpointslices", "list", "", "endpointslices", "", "", true},
		{"a node updates its own status", "update", "", "nodes", "status", "n1", true},
		{"a node patches its own Node", "patch", "", "nodes", "", "n1", true},
		{"a node may not update another Node", "update", "", "nodes", "status", "n2", false},
		{"a node may not delete Nodes", "delete", "", "nodes", "", "n1", false},
		{"a node renews its own lease", "update", "kube-node-lease", "leases", "", "n1", true},
		{"a node may not renew another node's lease", "update", "kube-node-lease", "leases", "", "n2", false},
		{"a node may not touch leases elsewhere", "update", "kube-system", "leases", "", "n1", false},
		{"a node updates pod status (admission checks the binding)", "update", "default", "pods", "status", "p", true},
		{"a node may not change pod specs", "update", "default", "pods", "", "p", false},
		{"a node may not create services", "create", "default", "services", "", "", false},
		{"a node may not create pods", "create", "default", "pods", "", "", false},
		{"a node records events", "create", "default", "events", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, reason, _ := authz.Authorize(context.Background(), authorizer.AttributesRecord{
				User: nodeUser("n1"), Verb: tt.verb, Namespace: tt.ns, Resource: tt.resource, Subresource: tt.sub,
				Name: tt.objName, ResourceRequest: true,
			})
			if got := d == authorizer.DecisionAllow; got != tt.allow {
				t.Fatalf("allowed = %v (%s), want %v", got, reason, tt.allow)
			}
		})
	}
	// Anyone else without system:masters is refused.
	d, _, _ := authz.Authorize(context.Background(), authorizer.AttributesRecord{
		User: &user.DefaultInfo{Name: "bob", Groups: []string{user.AllAuthenticated}}, Verb: "list", Resource: "pods", ResourceRequest: true,
	})
	if d == authorizer.DecisionAllow {
		t.Fatal("an ordinary user may list pods")
	}
}

func TestNodeRestrictionAdmission(t *testing.T) {
	pods := map[string]*corev1.Pod{
		"mine":   {ObjectMeta: metav1.ObjectMeta{Name: "mine", Namespace: "default"}, Spec: corev1.PodSpec{NodeName: "n1"}},
		"theirs": {ObjectMeta: metav1.ObjectMeta{Name: "theirs", Namespace: "default"}, Spec: corev1.PodSpec{NodeName: "n2"}},
	}
	nr := &nodeRestriction{getPod: func(_ context.Context, _, name string) (*corev1.Pod, error) {
		if p, ok := pods[name]; ok {
			return p, nil
		}
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
	}}
	tests := []struct {
		name       string
		u          user.Info
		op         admission.Operation
		resource   string
		sub        string
		objName    string
		wantDenied bool
	}{
		{"status of a pod bound to the node", nodeUser("n1"), admission.Update, "pods", "status", "mine", false},
		{"status of a pod bound elsewhere", nodeUser("n1"), admission.Update, "pods", "status", "theirs", true},
		{"deleting a pod bound elsewhere", nodeUser("n1"), admission.Delete, "pods", "", "theirs", true},
		{"creating its own Node", nodeUser("n1"), admission.Create, "nodes", "", "n1", false},
		{"creating another Node", nodeUser("n1"), admission.Create, "nodes", "", "n2", true},
		{"creating another node's lease", nodeUser("n1"), admission.Create, "leases", "", "n2", true},
		{"an admin is not restricted", &user.DefaultInfo{Name: "admin", Groups: []string{user.SystemPrivilegedGroup}}, admission.Update, "pods", "status", "theirs", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var old *corev1.Pod
			if tt.resource == "pods" {
				old = pods[tt.objName]
			}
			attrs := admission.NewAttributesRecord(nil, old, schema.GroupVersionKind{}, "default", tt.objName,
				schema.GroupVersionResource{Version: "v1", Resource: tt.resource}, tt.sub, tt.op, nil, false, tt.u)
			if old == nil {
				attrs = admission.NewAttributesRecord(nil, nil, schema.GroupVersionKind{}, "default", tt.objName,
					schema.GroupVersionResource{Version: "v1", Resource: tt.resource}, tt.sub, tt.op, nil, false, tt.u)
			}
			err := nr.Validate(context.Background(), attrs, nil)
			if denied := err != nil; denied != tt.wantDenied {
				t.Fatalf("denied = %v (%v), want %v", denied, err, tt.wantDenied)
			}
			if err != nil && !apierrors.IsForbidden(err) {
				t.Fatalf("error is not Forbidden: %v", err)
			}
		})
	}
}

func nodeWithLabels(name string, labels map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

// A node may label its own Node as a kubelet does, but not with the labels
// NodeRestriction keeps for administrators, neither when it registers nor
// by changing or removing them later.
func TestNodeRestrictionLabels(t *testing.T) {
	nr := &nodeRestriction{}
	kubelet := map[string]string{
		corev1.LabelHostname: "n1", corev1.LabelOSStable: "linux", corev1.LabelArchStable: "amd64",
		corev1.LabelTopologyZone: "z1", "node.kubernetes.io/exclude-from-external-load-balancers": "",
		"kubelet.kubernetes.io/x": "y", "example.com/rack": "r1", "plain": "yes",
	}
	with := func(extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range kubelet {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	tests := []struct {
		name       string
		op         admission.Operation
		old, cur   map[string]string
		wantDenied []string // the labels the error names
	}{
		{"registering with the kubelet's labels", admission.Create, nil, kubelet, nil},
		{"registering with node-role", admission.Create, nil, with(map[string]string{"node-role.kubernetes.io/control-plane": ""}),
			[]string{"node-role.kubernetes.io/control-plane"}},
		{"registering with a node-restriction label", admission.Create, nil, with(map[string]string{"node-restriction.kubernetes.io/trusted": "yes"}),
			[]string{"node-restriction.kubernetes.io/trusted"}},
		{"a subdomain of node-restriction.kubernetes.io", admission.Create, nil, with(map[string]string{"team.node-restriction.kubernetes.io/x": "1"}),
			[]string{"team.node-restriction.kubernetes.io/x"}},
		{"an unknown k8s.io label", admission.Create, nil, with(map[string]string{"example.k8s.io/x": "1"}), []string{"example.k8s.io/x"}},
		{"adding node-role on update", admission.Update, kubelet, with(map[string]string{"node-role.kubernetes.io/worker": ""}),
			[]string{"node-role.kubernetes.io/worker"}},
		{"changing a node-restriction label an administrator set", admission.Update,
			with(map[string]string{"node-restriction.kubernetes.io/pool": "a"}), with(map[string]string{"node-restriction.kubernetes.io/pool": "b"}),
			[]string{"node-restriction.kubernetes.io/pool"}},
		{"removing node-role an administrator set", admission.Update, with(map[string]string{"node-role.kubernetes.io/worker": ""}), kubelet,
			[]string{"node-role.kubernetes.io/worker"}},
		{"keeping node-role an administrator set while updating others", admission.Update,
			with(map[string]string{"node-role.kubernetes.io/worker": ""}), with(map[string]string{"node-role.kubernetes.io/worker": "", "plain": "changed"}), nil},
		{"changing its own labels", admission.Update, kubelet, with(map[string]string{"example.com/rack": "r2", corev1.LabelTopologyZone: "z2"}), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var old runtime.Object
			if tt.old != nil {
				old = nodeWithLabels("n1", tt.old)
			}
			attrs := admission.NewAttributesRecord(nodeWithLabels("n1", tt.cur), old, schema.GroupVersionKind{Version: "v1", Kind: "Node"}, "", "n1",
				schema.GroupVersionResource{Version: "v1", Resource: "nodes"}, "", tt.op, nil, false, nodeUser("n1"))
			err := nr.Validate(context.Background(), attrs, nil)
			if len(tt.wantDenied) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !apierrors.IsForbidden(err) {
				t.Fatalf("err = %v, want a Forbidden error", err)
			}
			for _, l := range tt.wantDenied {
				if !strings.Contains(err.Error(), l) {
					t.Errorf("error %q does not name label %s", err, l)
				}
			}
		})
	}
	// An administrator labels any Node as it likes.
	admin := &user.DefaultInfo{Name: "admin", Groups: []string{user.SystemPrivilegedGroup}}
	attrs := admission.NewAttributesRecord(nodeWithLabels("n1", with(map[string]string{"node-role.kubernetes.io/worker": ""})), nodeWithLabels("n1", kubelet),
		schema.GroupVersionKind{Version: "v1", Kind: "Node"}, "", "n1", schema.GroupVersionResource{Version: "v1", Resource: "nodes"}, "", admission.Update, nil, false, admin)
	if err := nr.Validate(context.Background(), attrs, nil); err != nil {
		t.Errorf("an administrator may not set node-role: %v", err)
	}
}

// A status write may change labels, but a node may not relabel the pods
// bound to it that way: that would move them into or out of Services.
func TestNodeMayNotRelabelPodsThroughStatus(t *testing.T) {
	stored := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "mine", Namespace: "default", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "n1"}}
	nr := &nodeRestriction{}
	for _, tt := range []struct {
		name   string
		labels map[string]string
		denied bool
	}{
		{"same labels", map[string]string{"app": "web"}, false},
		{"changed label", map[string]string{"app": "db"}, true},
		{"added label", map[string]string{"app": "web", "x": "y"}, true},
		{"removed labels", nil, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cur := stored.DeepCopy()
			cur.Labels = tt.labels
			attrs := admission.NewAttributesRecord(cur, stored, schema.GroupVersionKind{Version: "v1", Kind: "Pod"}, "default", "mine",
				schema.GroupVersionResource{Version: "v1", Resource: "pods"}, "status", admission.Update, nil, false, nodeUser("n1"))
			err := nr.Validate(context.Background(), attrs, nil)
			if denied := err != nil; denied != tt.denied {
				t.Fatalf("denied = %v (%v), want %v", denied, err, tt.denied)
			}
			if err != nil && !apierrors.IsForbidden(err) {
				t.Fatalf("error is not Forbidden: %v", err)
			}
		})
	}
}

// A node reads, one by one, the Secrets, ConfigMaps and ServiceAccounts
// the pods bound to it refer to, and nothing else of them.
func TestNodeReadsWhatItsPodsReferTo(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web"}, Spec: corev1.PodSpec{
		NodeName: "n1", ServiceAccountName: "web", Containers: []corev1.Container{{Name: "c"}},
		Volumes: []corev1.Volume{
			{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "web-tls"}}},
			{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "web-cfg"}}}},
		}}}
	client := fake.NewClientset(pod)
	graph := nodegraph.New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go graph.Run(ctx, client)
	if ok, why := graph.Allowed(ctx, "n1", nodegraph.Ref{Resource: "secrets", Namespace: "app", Name: "web-tls"}, 10*time.Second); !ok {
		t.Fatalf("graph never learned of the pod: %s", why)
	}
	authz := newAuthorizer(graph)
	defer func(w time.Duration) { nodeGraphWait = w }(nodeGraphWait)
	nodeGraphWait = 10 * time.Millisecond
	for _, tt := range []struct {
		name                         string
		node, verb, resource, sub, n string
		allow                        bool
	}{
		{"its pod's secret", "n1", "get", "secrets", "", "web-tls", true},
		{"its pod's secret, watched by name", "n1", "watch", "secrets", "", "web-tls", true},
		{"its pod's configmap", "n1", "list", "configmaps", "", "web-cfg", true},
		{"its pod's service account", "n1", "get", "serviceaccounts", "", "web", true},
		{"another secret", "n1", "get", "secrets", "", "db-password", false},
		{"all secrets", "n1", "list", "secrets", "", "", false},
		{"another node's pod's secret", "n2", "get", "secrets", "", "web-tls", false},
		{"writing its pod's secret", "n1", "update", "secrets", "", "web-tls", false},
		{"deleting its pod's configmap", "n1", "delete", "configmaps", "", "web-cfg", false},
		{"a token for its pod's service account", "n1", "create", "serviceaccounts", "token", "web", true},
		{"a token for another service account", "n1", "create", "serviceaccounts", "token", "admin", false},
		{"another node's pod's token", "n2", "create", "serviceaccounts", "token", "web", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, reason, _ := authz.Authorize(ctx, authorizer.AttributesRecord{
				User: nodeUser(tt.node), Verb: tt.verb, Namespace: "app", Resource: tt.resource, Subresource: tt.sub,
				Name: tt.n, ResourceRequest: true,
			})
			if got := d == authorizer.DecisionAllow; got != tt.allow {
				t.Fatalf("allowed = %v (%s), want %v", got, reason, tt.allow)
			}
			if !tt.allow && !strings.Contains(reason, tt.node) {
				t.Errorf("reason %q does not name the node", reason)
			}
		})
	}
}

// A node's token requests must be bound, by UID, to a pod bound to it.
func TestNodeRestrictionTokens(t *testing.T) {
	pods := map[string]*corev1.Pod{
		"mine":   {ObjectMeta: metav1.ObjectMeta{Name: "mine", Namespace: "app", UID: "u-mine"}, Spec: corev1.PodSpec{NodeName: "n1"}},
		"theirs": {ObjectMeta: metav1.ObjectMeta{Name: "theirs", Namespace: "app", UID: "u-theirs"}, Spec: corev1.PodSpec{NodeName: "n2"}},
	}
	nr := &nodeRestriction{getPod: func(_ context.Context, _, name string) (*corev1.Pod, error) {
		if p, ok := pods[name]; ok {
			return p, nil
		}
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
	}}
	bound := func(kind, name, uid string) *authenticationv1.TokenRequest {
		return &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: kind, APIVersion: "v1", Name: name, UID: types.UID(uid)}}}
	}
	for _, tt := range []struct {
		name    string
		req     *authenticationv1.TokenRequest
		wantErr string
	}{
		{"bound to its pod", bound("Pod", "mine", "u-mine"), ""},
		{"not bound", &authenticationv1.TokenRequest{}, "not bound to a pod"},
		{"bound to a secret", bound("Secret", "s", "u"), "not bound to a pod"},
		{"without the uid", bound("Pod", "mine", ""), "without its uid"},
		{"an old uid", bound("Pod", "mine", "u-old"), "which is not the pod's"},
		{"another node's pod", bound("Pod", "theirs", "u-theirs"), `which is bound to "n2"`},
		{"a pod that does not exist", bound("Pod", "ghost", "u"), "does not exist"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			attrs := admission.NewAttributesRecord(tt.req, nil, authenticationv1.SchemeGroupVersion.WithKind("TokenRequest"), "app", "web",
				corev1.SchemeGroupVersion.WithResource("serviceaccounts"), "token", admission.Create, &metav1.CreateOptions{}, false, nodeUser("n1"))
			err := nr.Validate(context.Background(), attrs, nil)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want Forbidden containing %q", err, tt.wantErr)
			}
		})
	}
}
