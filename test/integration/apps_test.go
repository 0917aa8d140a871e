package integration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

const (
	agnhost     = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	agnhostNext = "registry.k8s.io/e2e-test-images/agnhost:2.67"
	// rollout bounds a Deployment's convergence on a loaded machine.
	rollout = 90 * time.Second
)

// TestWorkloads drives Deployments, ReplicaSets, DaemonSets and garbage
// collection on one `duet server`, each part in a namespace of its own,
// with a fake kubelet (fakeKubelet) in place of the node agents.
func TestWorkloads(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: "10.96.0.0/16,fd00:10:96::/108", ClusterCIDR: "10.244.0.0/16,fd00:10:244::/56"})
	// Nodes that renew their Leases: the node lifecycle controller taints
	// silent ones, and the scheduler leaves tainted nodes alone.
	for _, n := range []string{"w1", "w2", "w3"} {
		var labels map[string]string
		if n != "w3" {
			labels = map[string]string{"role": "edge"}
		}
		startFakeAgent(t, srv.Client, n, labels)
	}
	t.Run("RollingUpdate", func(t *testing.T) { testRollingUpdate(t, srv) })
	t.Run("Recreate", func(t *testing.T) { testRecreate(t, srv) })
	t.Run("Scale", func(t *testing.T) { testScale(t, srv) })
	t.Run("Validation", func(t *testing.T) { testAppsValidation(t, srv) })
	t.Run("GarbageCollection", func(t *testing.T) { testGarbageCollection(t, srv) })
	t.Run("DaemonSet", func(t *testing.T) { testDaemonSet(t, srv) })
	t.Run("Kubectl", func(t *testing.T) { testWorkloadsKubectl(t, srv) })
	// Last: it restarts the server.
	t.Run("KilledDuringRollout", func(t *testing.T) { testKilledDuringRollout(t, srv) })
}

// testNamespace creates a namespace for one part of a test.
func testNamespace(t testing.TB, srv *Server, name string) string {
	t.Helper()
	if _, err := srv.Client.CoreV1().Namespaces().Create(ctxT(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

func webDeployment(name string, replicas int32, mutate ...func(*appsv1.Deployment)) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agnhost", Image: agnhost,
					Args: []string{"netexec", "--http-port=8080"}, Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
			},
		},
	}
	for _, m := range mutate {
		m(d)
	}
	return d
}

// waitComplete waits until the Deployment has rolled out its current
// generation, as `kubectl rollout status` decides it, and no pod of it is
// terminating; it returns the Deployment.
func waitComplete(t testing.TB, c kubernetes.Interface, ns, name string) *appsv1.Deployment {
	t.Helper()
	var d *appsv1.Deployment
	eventually(t, rollout, "Deployment "+name+" rolled out", func() error {
		var err error
		if d, err = c.AppsV1().Deployments(ns).Get(context.Background(), name, metav1.GetOptions{}); err != nil {
			return err
		}
		s, want := d.Status, *d.Spec.Replicas
		if s.ObservedGeneration < d.Generation || s.UpdatedReplicas != want || s.Replicas != want || s.AvailableReplicas != want ||
			s.TerminatingReplicas == nil || *s.TerminatingReplicas != 0 {
			return fmt.Errorf("generation %d, status %+v", d.Generation, s)
		}
		return nil
	})
	return d
}

// replicaSetsOf lists the ReplicaSets a Deployment owns, newest revision
// last.
func replicaSetsOf(t *testing.T, c kubernetes.Interface, d *appsv1.Deployment) []appsv1.ReplicaSet {
	t.Helper()
	list, err := c.AppsV1().ReplicaSets(d.Namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []appsv1.ReplicaSet
	for _, rs := range list.Items {
		if ref := metav1.GetControllerOf(&rs); ref != nil && ref.UID == d.UID {
			out = append(out, rs)
		}
	}
	slices.SortFunc(out, func(a, b appsv1.ReplicaSet) int {
		return strings.Compare(a.Annotations["deployment.kubernetes.io/revision"], b.Annotations["deployment.kubernetes.io/revision"])
	})
	return out
}

// testRollingUpdate rolls a new template out over four replicas with
// maxSurge 1 and maxUnavailable 1, checking both bounds at every change
// seen, and then the Deployment's status and ReplicaSets field by field.
func testRollingUpdate(t *testing.T, srv *Server) {
	ns := testNamespace(t, srv, "rolling")
	c, ctx := srv.Client, ctxT(t)
	startKubelet(t, c, ns, nil)
	one := intstr.FromInt32(1)
	_, err := c.AppsV1().Deployments(ns).Create(ctx, webDeployment("web", 4, func(d *appsv1.Deployment) {
		d.Spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{MaxSurge: &one, MaxUnavailable: &one}
	}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitComplete(t, c, ns, "web")

	// Watch every change of the ReplicaSets (maxSurge bounds their
	// replicas) and of the pods (maxUnavailable bounds the ready ones).
	w := watchBounds(t, c, ns, 4+1, 4-1)
	d, err := c.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Spec.Template.Spec.Containers[0].Image = agnhostNext
	if _, err := c.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	d = waitComplete(t, c, ns, "web")
	if err := w.stop(); err != nil {
		t.Error(err)
	}
	t.Logf("during the rollout: at most %d pods asked for, at least %d ready", w.peak, w.low)

	rss := replicaSetsOf(t, c, d)
	if len(rss) != 2 {
		t.Fatalf("%d ReplicaSets, want the old and the new", len(rss))
	}
	old, cur := rss[0], rss[1]
	hash := cur.Labels[appsv1.DefaultDeploymentUniqueLabelKey]
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"new ReplicaSet's name", cur.Name, "web-" + hash},
		{"new ReplicaSet's template hash label", cur.Spec.Template.Labels[appsv1.DefaultDeploymentUniqueLabelKey], hash},
		{"new ReplicaSet's selector", cur.Spec.Selector.MatchLabels, map[string]string{"app": "web", appsv1.DefaultDeploymentUniqueLabelKey: hash}},
		{"new ReplicaSet's image", cur.Spec.Template.Spec.Containers[0].Image, agnhostNext},
		{"new ReplicaSet's annotations", cur.Annotations, map[string]string{
			"deployment.kubernetes.io/revision": "2", "deployment.kubernetes.io/desired-replicas": "4", "deployment.kubernetes.io/max-replicas": "5"}},
		{"new ReplicaSet's status", cur.Status, appsv1.ReplicaSetStatus{Replicas: 4, FullyLabeledReplicas: 4, ReadyReplicas: 4, AvailableReplicas: 4,
			TerminatingReplicas: ptr[int32](0), ObservedGeneration: cur.Generation, Conditions: nil}},
		{"old ReplicaSet's replicas", *old.Spec.Replicas, int32(0)},
		{"old ReplicaSet's revision", old.Annotations["deployment.kubernetes.io/revision"], "1"},
		{"Deployment's revision", d.Annotations["deployment.kubernetes.io/revision"], "2"},
		{"Deployment's observedGeneration", d.Status.ObservedGeneration, int64(2)},
		{"Deployment's counts", []int32{d.Status.Replicas, d.Status.UpdatedReplicas, d.Status.ReadyReplicas, d.Status.AvailableReplicas, d.Status.UnavailableReplicas},
			[]int32{4, 4, 4, 4, 0}},
	} {
		if !apiequality.Semantic.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	checkConditions(t, d, map[appsv1.DeploymentConditionType][3]string{
		appsv1.DeploymentAvailable:   {"True", "MinimumReplicasAvailable", "Deployment has minimum availability."},
		appsv1.DeploymentProgressing: {"True", "NewReplicaSetAvailable", fmt.Sprintf("ReplicaSet %q has successfully progressed.", cur.Name)},
	})
}

// checkConditions compares a Deployment's conditions with want: status,
// reason and message by type.
func checkConditions(t *testing.T, d *appsv1.Deployment, want map[appsv1.DeploymentConditionType][3]string) {
	t.Helper()
	got := map[appsv1.DeploymentConditionType][3]string{}
	for _, c := range d.Status.Conditions {
		got[c.Type] = [3]string{string(c.Status), c.Reason, c.Message}
		if c.LastUpdateTime.IsZero() || c.LastTransitionTime.IsZero() {
			t.Errorf("condition %s without times: %+v", c.Type, c)
		}
	}
	if !apiequality.Semantic.DeepEqual(got, want) {
		t.Errorf("conditions %v, want %v", got, want)
	}
}

// boundsWatch checks, at every change it sees, that the ReplicaSets of a
// namespace ask for at most maxReplicas pods together and that at least
// minReady of its pods are ready and not terminating.
type boundsWatch struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
	// peak and low are the extremes seen.
	peak, low int32
}

func watchBounds(t *testing.T, c kubernetes.Interface, ns string, maxReplicas, minReady int32) *boundsWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b := &boundsWatch{cancel: cancel, low: 1 << 30}
	rsList, err := c.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rsWatch, err := c.AppsV1().ReplicaSets(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: rsList.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	podList, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	podWatch, err := c.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: podList.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	replicas := map[string]int32{}
	for _, rs := range rsList.Items {
		replicas[rs.Name] = *rs.Spec.Replicas
	}
	ready := map[string]bool{}
	for _, p := range podList.Items {
		ready[p.Name] = isReady(&p) && p.DeletionTimestamp == nil
	}
	check := func(what string) {
		var total, up int32
		for _, n := range replicas {
			total += n
		}
		for _, r := range ready {
			if r {
				up++
			}
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		b.peak, b.low = max(b.peak, total), min(b.low, up)
		if total > maxReplicas {
			b.errs = append(b.errs, fmt.Errorf("after %s: ReplicaSets ask for %d pods, more than %d", what, total, maxReplicas))
		}
		if up < minReady {
			b.errs = append(b.errs, fmt.Errorf("after %s: %d pods ready, fewer than %d", what, up, minReady))
		}
	}
	b.wg.Go(func() {
		defer rsWatch.Stop()
		defer podWatch.Stop()
		for {
			select {
			case ev, ok := <-rsWatch.ResultChan():
				if !ok {
					return
				}
				if rs, ok := ev.Object.(*appsv1.ReplicaSet); ok {
					if ev.Type == watch.Deleted {
						delete(replicas, rs.Name)
					} else {
						replicas[rs.Name] = *rs.Spec.Replicas
					}
					check(fmt.Sprintf("%s ReplicaSet %s", ev.Type, rs.Name))
				}
			case ev, ok := <-podWatch.ResultChan():
				if !ok {
					return
				}
				if p, ok := ev.Object.(*corev1.Pod); ok {
					if ev.Type == watch.Deleted {
						delete(ready, p.Name)
					} else {
						ready[p.Name] = isReady(p) && p.DeletionTimestamp == nil
					}
					check(fmt.Sprintf("%s pod %s", ev.Type, p.Name))
				}
			case <-ctx.Done():
				return
			}
		}
	})
	return b
}

func (b *boundsWatch) stop() error {
	b.cancel()
	b.wg.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.peak == 0 {
		return errors.New("the watch saw no ReplicaSet")
	}
	return errors.Join(b.errs...)
}

// testRecreate: with the Recreate strategy no pod of the new template
// exists while one of the old does.
func testRecreate(t *testing.T, srv *Server) {
	ns := testNamespace(t, srv, "recreate")
	c, ctx := srv.Client, ctxT(t)
	startKubelet(t, c, ns, nil)
	_, err := c.AppsV1().Deployments(ns).Create(ctx, webDeployment("web", 2, func(d *appsv1.Deployment) {
		d.Spec.Strategy = appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}
	}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := waitComplete(t, c, ns, "web")
	pods, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: pods.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	hashes := map[string]string{}
	for _, p := range pods.Items {
		hashes[p.Name] = p.Labels[appsv1.DefaultDeploymentUniqueLabelKey]
	}
	oldHash := hashes[pods.Items[0].Name]

	d.Spec.Template.Spec.Containers[0].Image = agnhostNext
	if _, err := c.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	newSeen := 0
	timeout := time.After(rollout)
	for newSeen < 2 || len(hashes) > 2 {
		select {
		case ev := <-w.ResultChan():
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				t.Fatalf("watch: %v", ev.Object)
			}
			if ev.Type == watch.Deleted {
				delete(hashes, p.Name)
				continue
			}
			h := p.Labels[appsv1.DefaultDeploymentUniqueLabelKey]
			if _, known := hashes[p.Name]; !known && h != oldHash {
				newSeen++
				for name, other := range hashes {
					if other == oldHash {
						t.Fatalf("pod %s of the new template created while %s of the old one exists", p.Name, name)
					}
				}
			}
			hashes[p.Name] = h
		case <-timeout:
			t.Fatalf("Recreate did not replace the pods within %v: %v", rollout, hashes)
		}
	}
	waitComplete(t, c, ns, "web")
}

// testScale drives the scale subresource of Deployments and ReplicaSets.
func testScale(t *testing.T, srv *Server) {
	ns := testNamespace(t, srv, "scale")
	c, ctx := srv.Client, ctxT(t)
	startKubelet(t, c, ns, nil)
	if _, err := c.AppsV1().Deployments(ns).Create(ctx, webDeployment("web", 2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d := waitComplete(t, c, ns, "web")
	scale, err := c.AppsV1().Deployments(ns).GetScale(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if scale.Spec.Replicas != 2 || scale.Status.Replicas != 2 || scale.Status.Selector != "app=web" || scale.UID != d.UID {
		t.Errorf("scale = %+v, want 2 replicas of app=web with the Deployment's UID", scale)
	}
	scale.Spec.Replicas = 3
	if _, err := c.AppsV1().Deployments(ns).UpdateScale(ctx, "web", scale, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if d = waitComplete(t, c, ns, "web"); d.Status.ReadyReplicas != 3 {
		t.Errorf("after scaling to 3: %d ready", d.Status.ReadyReplicas)
	}
	// A stale resourceVersion conflicts, as on the Deployment itself.
	if _, err := c.AppsV1().Deployments(ns).UpdateScale(ctx, "web", scale, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Errorf("scale with a stale resourceVersion: %v, want a conflict", err)
	}
	bad := &autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns}, Spec: autoscalingv1.ScaleSpec{Replicas: -1}}
	_, err = c.AppsV1().Deployments(ns).UpdateScale(ctx, "web", bad, metav1.UpdateOptions{})
	expectInvalid(t, err, "spec.replicas", "must be greater than or equal to 0")

	rs := replicaSetsOf(t, c, d)[0]
	rsScale, err := c.AppsV1().ReplicaSets(ns).GetScale(ctx, rs.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rsScale.Spec.Replicas != 3 || !strings.Contains(rsScale.Status.Selector, appsv1.DefaultDeploymentUniqueLabelKey+"=") {
		t.Errorf("ReplicaSet scale = %+v, want 3 replicas selected by pod-template-hash", rsScale)
	}
	if _, err := c.AppsV1().Deployments(ns).GetScale(ctx, "none", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("scale of a missing Deployment: %v, want not found", err)
	}
}

// expectInvalid checks that err is a 422 whose causes name field with
// detail.
func expectInvalid(t *testing.T, err error, field, detail string) {
	t.Helper()
	var st apierrors.APIStatus
	if !apierrors.IsInvalid(err) || !errors.As(err, &st) || st.Status().Details == nil {
		t.Fatalf("err = %v, want an Invalid status naming %s", err, field)
	}
	for _, c := range st.Status().Details.Causes {
		if c.Field == field && strings.Contains(c.Message, detail) {
			return
		}
	}
	t.Errorf("causes %+v, want %s: %s", st.Status().Details.Causes, field, detail)
}

// testAppsValidation: bad objects are refused with Kubernetes' Status,
// each cause naming its field.
func testAppsValidation(t *testing.T, srv *Server) {
	ns := testNamespace(t, srv, "validation")
	c, ctx := srv.Client, ctxT(t)
	zero := intstr.FromInt32(0)
	for _, tc := range []struct {
		name          string
		obj           *appsv1.Deployment
		field, detail string
	}{
		{"selector", webDeployment("a", 1, func(d *appsv1.Deployment) { d.Spec.Template.Labels = map[string]string{"app": "other"} }),
			"spec.template.metadata.labels", "`selector` does not match template `labels`"},
		{"replicas", webDeployment("b", -2), "spec.replicas", "must be greater than or equal to 0"},
		{"surge", webDeployment("c", 1, func(d *appsv1.Deployment) {
			d.Spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{MaxSurge: &zero, MaxUnavailable: &zero}
		}), "spec.strategy.rollingUpdate.maxUnavailable", "may not be 0 when `maxSurge` is 0"},
		{"restartPolicy", webDeployment("d", 1, func(d *appsv1.Deployment) { d.Spec.Template.Spec.RestartPolicy = corev1.RestartPolicyNever }),
			"spec.template.spec.restartPolicy", `supported values: "Always"`},
	} {
		_, err := c.AppsV1().Deployments(ns).Create(ctx, tc.obj, metav1.CreateOptions{})
		expectInvalid(t, err, tc.field, tc.detail)
	}
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "agent"}, Spec: appsv1.DaemonSetSpec{
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
		Template: webDeployment("agent", 1).Spec.Template,
	}}
	ds.Spec.Template.Spec.Containers[0].Image = ""
	_, err := c.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{})
	expectInvalid(t, err, "spec.template.spec.containers[0].image", "Required value")

	// The selector is immutable; kubectl shows the field.
	if _, err := c.AppsV1().Deployments(ns).Create(ctx, webDeployment("web", 0), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := srv.Kubectl("", "-n", ns, "patch", "deployment", "web", "--type=merge", "-p",
		`{"spec":{"selector":{"matchLabels":{"tier":"x"}},"template":{"metadata":{"labels":{"tier":"x"}}}}}`)
	if err == nil || !strings.Contains(stderr, `The Deployment "web" is invalid`) || !strings.Contains(stderr, "spec.selector: Invalid value") ||
		!strings.Contains(stderr, "field is immutable") {
		t.Errorf("kubectl patch of the selector: %v\n%s", err, stderr)
	}
}

// podsOf lists a namespace's pods with label app=name.
func podsOf(t *testing.T, c kubernetes.Interface, ns, name string) []corev1.Pod {
	t.Helper()
	list, err := c.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// testGarbageCollection deletes Deployments with each propagation policy,
// and objects of other resources whose owners are gone.
func testGarbageCollection(t *testing.T, srv *Server) {
	ns := testNamespace(t, srv, "gc")
	c, ctx := srv.Client, ctxT(t)
	startKubelet(t, c, ns, nil)
	deploy := func(name string) *appsv1.Deployment {
		t.Helper()
		if _, err := c.AppsV1().Deployments(ns).Create(ctx, webDeployment(name, 2), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		return waitComplete(t, c, ns, name)
	}
	gone := func(name string) error {
		if _, err := c.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("Deployment %s still there (%v)", name, err)
		}
		return nil
	}
	policy := func(p metav1.DeletionPropagation) metav1.DeleteOptions {
		return metav1.DeleteOptions{PropagationPolicy: &p}
	}

	t.Run("Background", func(t *testing.T) {
		d := deploy("bg")
		if err := c.AppsV1().Deployments(ns).Delete(ctx, "bg", policy(metav1.DeletePropagationBackground)); err != nil {
			t.Fatal(err)
		}
		eventually(t, rollout, "ReplicaSets and pods of bg collected", func() error {
			if n, m := len(replicaSetsOf(t, c, d)), len(podsOf(t, c, ns, "bg")); n+m > 0 {
				return fmt.Errorf("%d ReplicaSets, %d pods left", n, m)
			}
			return nil
		})
	})

	t.Run("Foreground", func(t *testing.T) {
		d := deploy("fg")
		if err := c.AppsV1().Deployments(ns).Delete(ctx, "fg", policy(metav1.DeletePropagationForeground)); err != nil {
			t.Fatal(err)
		}
		// The owner waits, deleted but present, for its dependents.
		held, err := c.AppsV1().Deployments(ns).Get(ctx, "fg", metav1.GetOptions{})
		if err == nil && (held.DeletionTimestamp == nil || !slices.Contains(held.Finalizers, metav1.FinalizerDeleteDependents)) {
			t.Errorf("Deployment right after a foreground delete: deletionTimestamp %v, finalizers %v", held.DeletionTimestamp, held.Finalizers)
		}
		eventually(t, rollout, "fg deleted", func() error { return gone("fg") })
		if n, m := len(replicaSetsOf(t, c, d)), len(podsOf(t, c, ns, "fg")); n+m > 0 {
			t.Errorf("the owner went before its dependents: %d ReplicaSets, %d pods left", n, m)
		}
	})

	t.Run("Orphan", func(t *testing.T) {
		d := deploy("orphan")
		rs := replicaSetsOf(t, c, d)[0]
		if err := c.AppsV1().Deployments(ns).Delete(ctx, "orphan", policy(metav1.DeletePropagationOrphan)); err != nil {
			t.Fatal(err)
		}
		eventually(t, rollout, "orphan deleted", func() error { return gone("orphan") })
		left, err := c.AppsV1().ReplicaSets(ns).Get(ctx, rs.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the orphaned ReplicaSet: %v", err)
		}
		if len(left.OwnerReferences) != 0 {
			t.Errorf("orphaned ReplicaSet still has owners %v", left.OwnerReferences)
		}
		pods := podsOf(t, c, ns, "orphan")
		if len(pods) != 2 {
			t.Fatalf("%d pods after orphaning, want the 2 of the ReplicaSet", len(pods))
		}
		for _, p := range pods {
			if ref := metav1.GetControllerOf(&p); ref == nil || ref.UID != rs.UID || p.DeletionTimestamp != nil {
				t.Errorf("pod %s: controller %v, deletionTimestamp %v; want the ReplicaSet and none", p.Name, ref, p.DeletionTimestamp)
			}
		}
	})

	t.Run("EveryResource", func(t *testing.T) {
		// Any resource may own any other: a ConfigMap owns a Secret.
		owner, err := c.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "owner"}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "owned", OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "v1", Kind: "ConfigMap", Name: "owner", UID: owner.UID}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// A Service's EndpointSlices name it as their owner.
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{
			IPFamilyPolicy: ptr(corev1.IPFamilyPolicyRequireDualStack), Selector: map[string]string{"app": "orphan"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromString("http")}}}}
		if _, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		sliceList := func() ([]discoveryv1.EndpointSlice, error) {
			list, err := c.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
			if err != nil {
				return nil, err
			}
			return list.Items, nil
		}
		eventually(t, rollout, "EndpointSlices of both families", func() error {
			s, err := sliceList()
			if err != nil || len(s) != 2 {
				return fmt.Errorf("%d slices (%v)", len(s), err)
			}
			return nil
		})
		if err := c.CoreV1().ConfigMaps(ns).Delete(ctx, "owner", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := c.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, rollout, "the Secret and the EndpointSlices collected", func() error {
			if _, err := c.CoreV1().Secrets(ns).Get(ctx, "owned", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("Secret owned: %v", err)
			}
			if s, err := sliceList(); err != nil || len(s) > 0 {
				return fmt.Errorf("%d slices left (%v)", len(s), err)
			}
			return nil
		})
	})
}

// testDaemonSet: one pod on each node the DaemonSet's node selector
// picks, one more for a node that comes to match, and a rolling update of
// them all.
func testDaemonSet(t *testing.T, srv *Server) {
	ns := testNamespace(t, srv, "daemons")
	c, ctx := srv.Client, ctxT(t)
	startKubelet(t, c, ns, nil)
	tmpl := webDeployment("agent", 1).Spec.Template
	tmpl.Spec.NodeSelector = map[string]string{"role": "edge"}
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "agent"}, Spec: appsv1.DaemonSetSpec{
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}}, Template: tmpl}}
	if _, err := c.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	placed := func(image string, nodes ...string) func() error {
		return func() error {
			ds, err := c.AppsV1().DaemonSets(ns).Get(ctx, "agent", metav1.GetOptions{})
			if err != nil {
				return err
			}
			var got []string
			for _, p := range podsOf(t, c, ns, "agent") {
				if p.DeletionTimestamp == nil && p.Spec.Containers[0].Image == image && isReady(&p) {
					got = append(got, p.Spec.NodeName)
				}
			}
			slices.Sort(got)
			n := int32(len(nodes))
			want := appsv1.DaemonSetStatus{ObservedGeneration: ds.Generation, DesiredNumberScheduled: n, CurrentNumberScheduled: n,
				NumberReady: n, UpdatedNumberScheduled: n, NumberAvailable: n}
			st := ds.Status
			st.CollisionCount, st.Conditions = nil, nil
			if !slices.Equal(got, nodes) || !apiequality.Semantic.DeepEqual(st, want) {
				return fmt.Errorf("ready pods of %s on %v, status %+v; want on %v, status %+v", image, got, ds.Status, nodes, want)
			}
			return nil
		}
	}
	eventually(t, rollout, "a pod on each edge node", placed(agnhost, "w1", "w2"))

	node, err := c.CoreV1().Nodes().Get(ctx, "w3", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Labels["role"] = "edge"
	if _, err := c.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, rollout, "a pod on the new edge node too", placed(agnhost, "w1", "w2", "w3"))

	out := srv.MustKubectl(t, "", "-n", ns, "set", "image", "daemonset/agent", "agnhost="+agnhostNext)
	if !strings.Contains(out, "image updated") {
		t.Errorf("kubectl set image: %s", out)
	}
	srv.MustKubectl(t, "", "-n", ns, "rollout", "status", "daemonset/agent", "--timeout=90s")
	eventually(t, rollout, "the new image on every edge node", placed(agnhostNext, "w1", "w2", "w3"))
	revs, err := c.AppsV1().ControllerRevisions(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(revs.Items) != 2 {
		t.Errorf("%d ControllerRevisions, want one per template", len(revs.Items))
	}
	if out := srv.MustKubectl(t, "", "-n", ns, "get", "ds", "agent"); !strings.Contains(out, "NODE SELECTOR") || !strings.Contains(out, "role=edge") {
		t.Errorf("kubectl get ds:\n%s", out)
	}
}

// testWorkloadsKubectl is a user's session: create, roll out, undo,
// restart, scale, and delete with each cascade.
func testWorkloadsKubectl(t *testing.T, srv *Server) {
	ns := testNamespace(t, srv, "kubectl")
	startKubelet(t, srv.Client, ns, nil)
	k := func(args ...string) string { return srv.MustKubectl(t, "", append([]string{"-n", ns}, args...)...) }
	status := func() {
		if out := k("rollout", "status", "deployment/web", "--timeout=90s"); !strings.Contains(out, `deployment "web" successfully rolled out`) {
			t.Errorf("rollout status: %s", out)
		}
	}
	image := func() string {
		return k("get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}")
	}

	k("create", "deployment", "web", "--image="+agnhost, "--replicas=3", "--", "/agnhost", "serve-hostname")
	status()
	out := k("get", "deployment", "web")
	if fields := strings.Fields(out); !slices.Equal(fields[:9], []string{"NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "web", "3/3", "3", "3"}) {
		t.Errorf("kubectl get deployment:\n%s", out)
	}
	k("set", "image", "deployment/web", "agnhost="+agnhostNext)
	status()
	if out := k("rollout", "history", "deployment/web"); !strings.Contains(out, "1 ") || !strings.Contains(out, "2 ") {
		t.Errorf("rollout history:\n%s", out)
	}
	k("rollout", "undo", "deployment/web")
	status()
	if got := image(); got != agnhost {
		t.Errorf("after undo the image is %s, want %s", got, agnhost)
	}
	k("rollout", "restart", "deployment/web")
	status()
	if got := k("get", "deployment", "web", "-o", `jsonpath={.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}`); got == "" {
		t.Error("rollout restart left no restartedAt annotation")
	}
	k("scale", "deployment", "web", "--replicas=5")
	status()
	if n := len(podsOf(t, srv.Client, ns, "web")); n != 5 {
		t.Errorf("%d pods after scaling to 5", n)
	}
	if out := k("get", "rs", "-o", "wide"); !strings.Contains(out, "pod-template-hash=") || !strings.Contains(out, "DESIRED") {
		t.Errorf("kubectl get rs -o wide:\n%s", out)
	}

	// --cascade=foreground returns once the Deployment and all it made are gone.
	k("delete", "deployment", "web", "--cascade=foreground", "--timeout=90s")
	if out := k("get", "rs,pods", "-l", "app=web", "-o", "name"); out != "" {
		t.Errorf("left after a foreground delete:\n%s", out)
	}

	k("create", "deployment", "web", "--image="+agnhost, "--replicas=2")
	status()
	k("delete", "deployment", "web", "--cascade=orphan")
	eventually(t, rollout, "the orphaned ReplicaSet without owners", func() error {
		out, _, err := srv.Kubectl("", "-n", ns, "get", "rs", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.metadata.name}:{.metadata.ownerReferences}{end}")
		if err != nil || !strings.HasSuffix(out, ":") || strings.Count(out, ":") != 1 {
			return fmt.Errorf("ReplicaSets %q (%v)", out, err)
		}
		return nil
	})
	if n := len(podsOf(t, srv.Client, ns, "web")); n != 2 {
		t.Errorf("%d pods after orphaning, want 2", n)
	}
	k("delete", "rs", "-l", "app=web")
	eventually(t, rollout, "the pods of the deleted ReplicaSet collected", func() error {
		if n := len(podsOf(t, srv.Client, ns, "web")); n > 0 {
			return fmt.Errorf("%d pods left", n)
		}
		return nil
	})
}

// testKilledDuringRollout kills the server with SIGKILL while a rollout
// waits for its first new pod, and checks that the rollout completes once
// the server is back.
func testKilledDuringRollout(t *testing.T, srv *Server) {
	ns := testNamespace(t, srv, "restart")
	ctx := ctxT(t)
	// Until the kill, pods of the new template do not get ready.
	startKubelet(t, srv.Client, ns, func(p *corev1.Pod) bool { return p.Spec.Containers[0].Image != agnhostNext })
	zero, one := intstr.FromInt32(0), intstr.FromInt32(1)
	_, err := srv.Client.AppsV1().Deployments(ns).Create(ctx, webDeployment("web", 3, func(d *appsv1.Deployment) {
		d.Spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{MaxSurge: &one, MaxUnavailable: &zero}
	}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := waitComplete(t, srv.Client, ns, "web")
	d.Spec.Template.Spec.Containers[0].Image = agnhostNext
	if _, err := srv.Client.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, rollout, "the rollout waiting for its first new pod", func() error {
		d, err := srv.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if s := d.Status; s.ObservedGeneration != 2 || s.UpdatedReplicas != 1 || s.Replicas != 4 || s.AvailableReplicas != 3 {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	srv.Kill(t)
	srv.Restart(t)
	startKubelet(t, srv.Client, ns, nil)
	d = waitComplete(t, srv.Client, ns, "web")
	if rss := replicaSetsOf(t, srv.Client, d); len(rss) != 2 || *rss[0].Spec.Replicas != 0 || rss[1].Spec.Template.Spec.Containers[0].Image != agnhostNext {
		t.Errorf("after the restart: %d ReplicaSets, want the old one at 0 and the new one", len(rss))
	}
}
