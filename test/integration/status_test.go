package integration

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestStatusWritesIgnoreSpec: a write to services/X/status, nodes/X/status
// or pods/X/status that also changes the spec succeeds (200), stores the
// new status and keeps the stored spec, as Kubernetes does; labels change
// as sent. A Service's status write allocates nothing: with one node port
// in the range, turning the spec into a NodePort through status leaves the
// port free for a real NodePort Service.
func TestStatusWritesIgnoreSpec(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range + "," + v6Range,
		Extra: []string{"--service-node-port-range", "30000-30000"}})
	ctx := ctxT(t)
	core := srv.Client.CoreV1()
	now := metav1.Now()

	t.Run("services", func(t *testing.T) {
		svc, err := core.Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{})
		fatalIf(t, err)
		sent := svc.DeepCopy()
		sent.Labels = map[string]string{"via": "status"}
		sent.Spec.Type = corev1.ServiceTypeNodePort
		sent.Spec.Ports[0].Port = 81
		sent.Spec.Selector = map[string]string{"app": "other"}
		sent.Spec.IPFamilyPolicy = ptr(corev1.IPFamilyPolicyRequireDualStack)
		sent.Status.Conditions = []metav1.Condition{{Type: "Checked", Status: metav1.ConditionTrue, Reason: "Test", Message: "status write", LastTransitionTime: now}}
		got, err := core.Services("default").UpdateStatus(ctx, sent, metav1.UpdateOptions{})
		if err != nil {
			t.Fatalf("status write with a changed spec: %v, want 200 with the spec ignored", err)
		}
		if !apiequality.Semantic.DeepEqual(got.Spec, svc.Spec) {
			t.Errorf("spec after a status write = %+v, want it unchanged: %+v", got.Spec, svc.Spec)
		}
		if len(got.Status.Conditions) != 1 || got.Status.Conditions[0].Type != "Checked" {
			t.Errorf("status conditions = %+v, want the written one", got.Status.Conditions)
		}
		if got.Labels["via"] != "status" {
			t.Errorf("labels = %v, want those sent (a status write may change them, as in Kubernetes)", got.Labels)
		}
		stored, err := core.Services("default").Get(ctx, "web", metav1.GetOptions{})
		fatalIf(t, err)
		if !apiequality.Semantic.DeepEqual(stored.Spec, svc.Spec) {
			t.Errorf("stored spec = %+v, want it unchanged", stored.Spec)
		}
		// Nothing was allocated for the ignored spec: the Service holds
		// one cluster IP record, and the only node port is still free.
		ips, err := srv.Client.NetworkingV1().IPAddresses().List(ctx, metav1.ListOptions{})
		fatalIf(t, err)
		var held []string
		for _, ip := range ips.Items {
			if ref := ip.Spec.ParentRef; ref != nil && ref.Resource == "services" && ref.Namespace == "default" && ref.Name == "web" {
				held = append(held, ip.Name)
			}
		}
		if len(held) != 1 || held[0] != svc.Spec.ClusterIP {
			t.Errorf("IPAddress records of Service web = %v, want only its cluster IP %s", held, svc.Spec.ClusterIP)
		}

		np, err := core.Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "np"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "web"},
				Ports: []corev1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{})
		switch {
		case err != nil:
			t.Errorf("NodePort Service after the status write: %v (the status write took the only node port?)", err)
		case np.Spec.Ports[0].NodePort != 30000:
			t.Errorf("node port = %d, want 30000", np.Spec.Ports[0].NodePort)
		}

		// A change the main resource would refuse (clusterIP is
		// immutable) is ignored too, not refused with a 422.
		sent = stored.DeepCopy()
		sent.Spec.ClusterIP, sent.Spec.ClusterIPs = "10.96.0.77", []string{"10.96.0.77"}
		sent.Status.Conditions[0].Message = "second status write"
		got, err = core.Services("default").UpdateStatus(ctx, sent, metav1.UpdateOptions{})
		if err != nil {
			t.Fatalf("status write with a new clusterIP: %v, want 200 with the spec ignored", err)
		}
		if got.Spec.ClusterIP != svc.Spec.ClusterIP || got.Status.Conditions[0].Message != "second status write" {
			t.Errorf("after the status write: clusterIP %s, condition %q; want %s kept and the condition written",
				got.Spec.ClusterIP, got.Status.Conditions[0].Message, svc.Spec.ClusterIP)
		}
	})

	t.Run("nodes", func(t *testing.T) {
		n, err := core.Nodes().Create(ctx, newNode("status-node"), metav1.CreateOptions{})
		fatalIf(t, err)
		sent := n.DeepCopy()
		sent.Spec.Unschedulable = true
		sent.Spec.Taints = []corev1.Taint{{Key: "k", Value: "v", Effect: corev1.TaintEffectNoSchedule}}
		sent.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "Test", LastHeartbeatTime: now, LastTransitionTime: now}}
		got, err := core.Nodes().UpdateStatus(ctx, sent, metav1.UpdateOptions{})
		if err != nil {
			t.Fatalf("status write with a changed spec: %v, want 200 with the spec ignored", err)
		}
		if !apiequality.Semantic.DeepEqual(got.Spec, n.Spec) {
			t.Errorf("spec after a status write = %+v, want it unchanged: %+v", got.Spec, n.Spec)
		}
		if len(got.Status.Conditions) != 1 || got.Status.Conditions[0].Type != corev1.NodeReady {
			t.Errorf("status conditions = %+v, want the written one", got.Status.Conditions)
		}
	})

	t.Run("pods", func(t *testing.T) {
		p, err := core.Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "status-pod"},
			// Left unscheduled, so that nothing else writes it meanwhile.
			Spec: corev1.PodSpec{SchedulerName: "none", Containers: []corev1.Container{{Name: "c", Image: "ignored"}}},
		}, metav1.CreateOptions{})
		fatalIf(t, err)
		sent := p.DeepCopy()
		sent.Spec.ActiveDeadlineSeconds = ptr[int64](30)
		sent.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: "n1", UID: "u1"}}
		sent.Status.Message = "status write"
		got, err := core.Pods("default").UpdateStatus(ctx, sent, metav1.UpdateOptions{})
		if err != nil {
			t.Fatalf("status write with a changed spec: %v, want 200 with the spec ignored", err)
		}
		if !apiequality.Semantic.DeepEqual(got.Spec, p.Spec) || len(got.OwnerReferences) != 0 {
			t.Errorf("after a status write: spec %+v, owner references %v; want the stored spec and none", got.Spec, got.OwnerReferences)
		}
		if got.Status.Message != "status write" {
			t.Errorf("status message = %q, want the written one", got.Status.Message)
		}
	})

	t.Run("a node may not relabel its pods or its Node through status", func(t *testing.T) {
		node := nodeClient(t, srv, "status-n1")
		n, err := node.CoreV1().Nodes().Create(ctx, newNode("status-n1"), metav1.CreateOptions{})
		fatalIf(t, err)
		n.Labels = map[string]string{"node-role.kubernetes.io/worker": ""}
		_, err = node.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		wantForbiddenLabel(t, "adding node-role.kubernetes.io/worker through nodes/status", err, "node-role.kubernetes.io/worker")

		p, err := core.Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "bound", Labels: map[string]string{"app": "web"}},
			Spec:       corev1.PodSpec{NodeName: "status-n1", Containers: []corev1.Container{{Name: "c", Image: "ignored"}}},
		}, metav1.CreateOptions{})
		fatalIf(t, err)
		p.Labels = map[string]string{"app": "db"}
		_, err = node.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("a node relabelling its pod through pods/status: %v, want 403 Forbidden", err)
		}
	})
}
