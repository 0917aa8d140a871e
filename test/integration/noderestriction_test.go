package integration

import (
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/duet-net/duet/internal/pki"
)

// nodeClient is a client with node name's own credentials, as `duet up`
// gives each agent.
func nodeClient(t *testing.T, srv *Server, name string) *kubernetes.Clientset {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".kubeconfig")
	fatalIf(t, pki.WriteNodeKubeconfig(srv.DataDir, name, path))
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	fatalIf(t, err)
	client, err := kubernetes.NewForConfig(cfg)
	fatalIf(t, err)
	return client
}

// wantForbiddenLabel checks that err is a 403 Forbidden Status that names
// label.
func wantForbiddenLabel(t *testing.T, what string, err error, label string) {
	t.Helper()
	var status apierrors.APIStatus
	switch {
	case err == nil:
		t.Errorf("%s: accepted, want 403 Forbidden naming %s", what, label)
	case !apierrors.IsForbidden(err):
		t.Errorf("%s: %v, want 403 Forbidden naming %s", what, err, label)
	case !strings.Contains(err.Error(), label):
		t.Errorf("%s: %q does not name label %s", what, err, label)
	default:
		if s, ok := err.(apierrors.APIStatus); ok {
			status = s
		}
		if status == nil || status.Status().Code != 403 {
			t.Errorf("%s: status %+v, want code 403", what, status)
		}
	}
}

// TestNodeSelfLabelling: a node identity registers and relabels its Node
// with the labels a kubelet sets, but is refused, with a 403 that names the
// label, when it sets, changes or removes node-role.kubernetes.io/* or
// node-restriction.kubernetes.io/* labels, as NodeRestriction refuses
// them. An administrator sets them freely.
func TestNodeSelfLabelling(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range + "," + v6Range})
	ctx := ctxT(t)
	node := nodeClient(t, srv, "n1").CoreV1().Nodes()

	kubelet := map[string]string{corev1.LabelHostname: "n1", corev1.LabelOSStable: "linux", "example.com/rack": "r1"}
	withLabel := func(k, v string) map[string]string {
		out := map[string]string{k: v}
		for k, v := range kubelet {
			out[k] = v
		}
		return out
	}
	_, err := node.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1",
		Labels: withLabel("node-role.kubernetes.io/control-plane", "")}}, metav1.CreateOptions{})
	wantForbiddenLabel(t, "registering with node-role.kubernetes.io/control-plane", err, "node-role.kubernetes.io/control-plane")

	n, err := node.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: kubelet}}, metav1.CreateOptions{})
	fatalIf(t, err)

	upd := n.DeepCopy()
	upd.Labels = withLabel("node-restriction.kubernetes.io/trusted", "yes")
	_, err = node.Update(ctx, upd, metav1.UpdateOptions{})
	wantForbiddenLabel(t, "adding node-restriction.kubernetes.io/trusted", err, "node-restriction.kubernetes.io/trusted")

	_, err = node.Patch(ctx, "n1", types.MergePatchType, []byte(`{"metadata":{"labels":{"node-role.kubernetes.io/worker":""}}}`), metav1.PatchOptions{})
	wantForbiddenLabel(t, "patching in node-role.kubernetes.io/worker", err, "node-role.kubernetes.io/worker")

	// The administrator's labels stay; the node may change its own.
	n, err = srv.Client.CoreV1().Nodes().Patch(ctx, "n1", types.MergePatchType,
		[]byte(`{"metadata":{"labels":{"node-role.kubernetes.io/worker":""}}}`), metav1.PatchOptions{})
	fatalIf(t, err)
	upd = n.DeepCopy()
	upd.Labels["example.com/rack"] = "r2"
	n, err = node.Update(ctx, upd, metav1.UpdateOptions{})
	fatalIf(t, err)
	upd = n.DeepCopy()
	delete(upd.Labels, "node-role.kubernetes.io/worker")
	_, err = node.Update(ctx, upd, metav1.UpdateOptions{})
	wantForbiddenLabel(t, "removing node-role.kubernetes.io/worker", err, "node-role.kubernetes.io/worker")

	got, err := srv.Client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	fatalIf(t, err)
	if _, ok := got.Labels["node-role.kubernetes.io/worker"]; !ok || got.Labels["example.com/rack"] != "r2" || len(got.Labels) != len(kubelet)+1 {
		t.Errorf("Node labels = %v, want the kubelet's with rack r2 and the administrator's node-role", got.Labels)
	}
}
