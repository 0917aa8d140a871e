package integration

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	nclient "github.com/duet-net/duet/internal/apis/networking/client"
	"github.com/duet-net/duet/internal/apis/networking/v1alpha1"
	"github.com/duet-net/duet/internal/pki"
)

func clusterCIDRClient(t *testing.T, srv *Server) *nclient.ClusterCIDRs {
	t.Helper()
	c, err := nclient.New(srv.Config)
	fatalIf(t, err)
	return c
}

func clusterCIDRReady(c *v1alpha1.ClusterCIDR) error {
	cond := apimeta.FindStatusCondition(c.Status.Conditions, v1alpha1.ClusterCIDRConditionReady)
	if cond == nil || cond.Status != metav1.ConditionTrue {
		return fmt.Errorf("ClusterCIDR %s: Ready condition %+v", c.Name, cond)
	}
	return nil
}

// TestClusterCIDRAPI: networking.duet.dev/v1alpha1 ClusterCIDRs are served
// with OpenAPI, a kubectl table and a Ready condition; --cluster-cidr
// appears as default-ipv4; a second ClusterCIDR of a family is refused
// naming spec.cidr and the existing one; the spec is immutable; the
// primary family's cannot be deleted; node identities may read them.
func TestClusterCIDRAPI(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range, ClusterCIDR: "10.244.0.0/16"})
	ctx := ctxT(t)
	api := clusterCIDRClient(t, srv)

	eventually(t, 30*time.Second, "default-ipv4 is Ready", func() error {
		c, err := api.Get(ctx, "default-ipv4", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if c.Spec.CIDR != "10.244.0.0/16" || c.Spec.NodeMaskSize != 24 {
			t.Fatalf("default-ipv4 spec %+v, want 10.244.0.0/16 with /24 nodes", c.Spec)
		}
		return clusterCIDRReady(c)
	})

	// kubectl apply, as a user would, without nodeMaskSize: defaulted.
	srv.MustKubectl(t, `apiVersion: networking.duet.dev/v1alpha1
kind: ClusterCIDR
metadata: {name: v6}
spec: {cidr: "fd00:10:244::/56"}
`, "apply", "-f", "-")
	v6, err := api.Get(ctx, "v6", metav1.GetOptions{})
	fatalIf(t, err)
	if v6.Spec.NodeMaskSize != 64 {
		t.Errorf("nodeMaskSize defaulted to %d, want 64", v6.Spec.NodeMaskSize)
	}
	out := srv.MustKubectl(t, "", "get", "clustercidrs")
	if !strings.Contains(out, "CIDR") || !strings.Contains(out, "NODEMASKSIZE") || !strings.Contains(out, "AGE") ||
		!strings.Contains(out, "fd00:10:244::/56") || !strings.Contains(out, "10.244.0.0/16") {
		t.Errorf("kubectl get clustercidrs:\n%s", out)
	}
	if out := srv.MustKubectl(t, "", "explain", "clustercidr.spec.nodeMaskSize"); !strings.Contains(out, "prefix length") {
		t.Errorf("kubectl explain (OpenAPI):\n%s", out)
	}

	_, stderr, err := srv.Kubectl(`apiVersion: networking.duet.dev/v1alpha1
kind: ClusterCIDR
metadata: {name: v6-again}
spec: {cidr: "fd00:20:244::/56", nodeMaskSize: 64}
`, "create", "-f", "-")
	if err == nil || !strings.Contains(stderr, "spec.cidr") || !strings.Contains(stderr, "v6 (fd00:10:244::/56)") {
		t.Errorf("a second IPv6 ClusterCIDR: %v %s, want a refusal naming spec.cidr and v6", err, stderr)
	}
	_, err = api.Create(ctx, &v1alpha1.ClusterCIDR{ObjectMeta: metav1.ObjectMeta{Name: "bad"},
		Spec: v1alpha1.ClusterCIDRSpec{CIDR: "fd00:30::/56", NodeMaskSize: 40}}, metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.nodeMaskSize") {
		t.Errorf("a node mask wider than the range: %v, want a 422 naming spec.nodeMaskSize", err)
	}
	v6.Spec.CIDR = "fd00:40::/56"
	if _, err := api.Update(ctx, v6, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.cidr: Invalid value: \"fd00:40::/56\": field is immutable") {
		t.Errorf("changing spec.cidr: %v, want a 422 saying it is immutable", err)
	}
	if err := api.Delete(ctx, "default-ipv4", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "primary family IPv4") {
		t.Errorf("deleting the primary family's ClusterCIDR: %v, want a 403 saying why", err)
	}

	path := filepath.Join(t.TempDir(), "n1.kubeconfig")
	fatalIf(t, pki.WriteNodeKubeconfig(srv.DataDir, "n1", path))
	nodeCfg, err := clientcmd.BuildConfigFromFlags("", path)
	fatalIf(t, err)
	asNode, err := nclient.New(nodeCfg)
	fatalIf(t, err)
	list, err := asNode.List(ctx, metav1.ListOptions{})
	fatalIf(t, err)
	if len(list.Items) != 2 {
		t.Errorf("a node lists %d ClusterCIDRs, want 2", len(list.Items))
	}
	w, err := asNode.Watch(ctx, metav1.ListOptions{})
	fatalIf(t, err)
	w.Stop()
	if _, err := asNode.Create(ctx, &v1alpha1.ClusterCIDR{ObjectMeta: metav1.ObjectMeta{Name: "by-node"},
		Spec: v1alpha1.ClusterCIDRSpec{CIDR: "fd00:50::/56"}}, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("a node creating a ClusterCIDR: %v, want 403", err)
	}
}
