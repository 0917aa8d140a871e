package apps

import (
	"context"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"

	registry "github.com/duet-net/duet/internal/registry/generic"
)

func template(image string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: image}}},
	}
}

func newDeployment(mutate ...func(*appsv1.Deployment)) *appsv1.Deployment {
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", ResourceVersion: "1"},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: template("registry.k8s.io/e2e-test-images/agnhost:2.66.1"),
		},
	}
	for _, m := range mutate {
		m(d)
	}
	return d
}

func newDaemonSet() *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: "default", ResourceVersion: "1"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: template("registry.k8s.io/pause:3.10"),
		},
	}
}

// testStrategy is the strategy NewStorage builds for rules, without a
// scheme: the hooks under test do not type objects.
func testStrategy(rules kindRules) *registry.Strategy { return strategy(nil, rules, true) }

// created runs a create through the strategy as the registry does.
func created(t *testing.T, s *registry.Strategy, obj runtime.Object) {
	t.Helper()
	s.PrepareForCreate(context.Background(), obj)
	if errs := s.Validate(context.Background(), obj); len(errs) > 0 {
		t.Fatalf("create refused: %v", errs)
	}
}

// A Deployment gets Kubernetes' defaults, for itself and its pod template,
// and starts at generation 1 with an empty status.
func TestDeploymentDefaults(t *testing.T) {
	d := newDeployment(func(d *appsv1.Deployment) {
		d.Status.Replicas = 7
		d.Spec.Template.Spec.ServiceAccountName = "builder"
	})
	created(t, testStrategy(deployment), d)
	quarter := intstr.FromString("25%")
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"replicas", d.Spec.Replicas, ptr.To[int32](1)},
		{"strategy", d.Spec.Strategy, appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
			RollingUpdate: &appsv1.RollingUpdateDeployment{MaxUnavailable: &quarter, MaxSurge: &quarter}}},
		{"revisionHistoryLimit", d.Spec.RevisionHistoryLimit, ptr.To[int32](10)},
		{"progressDeadlineSeconds", d.Spec.ProgressDeadlineSeconds, ptr.To[int32](600)},
		{"restartPolicy", d.Spec.Template.Spec.RestartPolicy, corev1.RestartPolicyAlways},
		{"dnsPolicy", d.Spec.Template.Spec.DNSPolicy, corev1.DNSClusterFirst},
		{"terminationGracePeriodSeconds", d.Spec.Template.Spec.TerminationGracePeriodSeconds, ptr.To[int64](30)},
		{"schedulerName", d.Spec.Template.Spec.SchedulerName, corev1.DefaultSchedulerName},
		{"imagePullPolicy", d.Spec.Template.Spec.Containers[0].ImagePullPolicy, corev1.PullIfNotPresent},
		{"terminationMessagePath", d.Spec.Template.Spec.Containers[0].TerminationMessagePath, corev1.TerminationMessagePathDefault},
		// Kubernetes stores the internal form converted back to v1,
		// which mirrors serviceAccountName into the deprecated field.
		{"serviceAccount", d.Spec.Template.Spec.DeprecatedServiceAccount, "builder"},
		{"generation", d.Generation, int64(1)},
		{"status", d.Status, appsv1.DeploymentStatus{}},
	} {
		if !equal(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, deref(c.got), deref(c.want))
		}
	}
}

// Updates bump the generation on spec or annotation changes only, and
// never change the status.
func TestDeploymentGeneration(t *testing.T) {
	s := testStrategy(deployment)
	stored := newDeployment()
	created(t, s, stored)
	stored.Status.ObservedGeneration = 1
	for _, tc := range []struct {
		name   string
		change func(*appsv1.Deployment)
		want   int64
	}{
		{"no change", func(*appsv1.Deployment) {}, 1},
		{"labels", func(d *appsv1.Deployment) { d.Labels = map[string]string{"tier": "front"} }, 1},
		{"status", func(d *appsv1.Deployment) { d.Status.Replicas = 5 }, 1},
		{"annotations", func(d *appsv1.Deployment) { d.Annotations = map[string]string{"note": "x"} }, 2},
		{"replicas", func(d *appsv1.Deployment) { d.Spec.Replicas = ptr.To[int32](3) }, 2},
		{"image", func(d *appsv1.Deployment) { d.Spec.Template.Spec.Containers[0].Image = "nginx" }, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := stored.DeepCopy()
			tc.change(d)
			s.PrepareForUpdate(context.Background(), d, stored)
			if d.Generation != tc.want {
				t.Errorf("generation = %d, want %d", d.Generation, tc.want)
			}
			if !equal(d.Status, stored.Status) {
				t.Errorf("status = %+v, want the stored %+v", d.Status, stored.Status)
			}
			if errs := s.ValidateUpdate(context.Background(), d, stored); len(errs) > 0 {
				t.Errorf("update refused: %v", errs)
			}
		})
	}
}

// Bad Deployments are refused with Kubernetes' errors, each naming its
// field.
func TestDeploymentValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*appsv1.Deployment)
		field  string
		detail string
	}{
		{"selector does not match the template", func(d *appsv1.Deployment) { d.Spec.Template.Labels = map[string]string{"app": "db"} },
			"spec.template.metadata.labels", "`selector` does not match template `labels`"},
		{"negative replicas", func(d *appsv1.Deployment) { d.Spec.Replicas = ptr.To[int32](-1) },
			"spec.replicas", "must be greater than or equal to 0"},
		{"no surge and no unavailability", func(d *appsv1.Deployment) {
			zero := intstr.FromInt32(0)
			d.Spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{MaxSurge: &zero, MaxUnavailable: &zero}
		}, "spec.strategy.rollingUpdate.maxUnavailable", "may not be 0 when `maxSurge` is 0"},
		{"Recreate with rollingUpdate", func(d *appsv1.Deployment) {
			one := intstr.FromInt32(1)
			d.Spec.Strategy = appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType, RollingUpdate: &appsv1.RollingUpdateDeployment{MaxSurge: &one}}
		}, "spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'"},
		{"bad name", func(d *appsv1.Deployment) { d.Name = "Web" }, "metadata.name", "a lowercase RFC 1123 subdomain"},
		{"container without image", func(d *appsv1.Deployment) { d.Spec.Template.Spec.Containers[0].Image = "" },
			"spec.template.spec.containers[0].image", "Required value"},
		{"progress deadline not above minReadySeconds", func(d *appsv1.Deployment) {
			d.Spec.MinReadySeconds = 30
			d.Spec.ProgressDeadlineSeconds = ptr.To[int32](30)
		}, "spec.progressDeadlineSeconds", "must be greater than minReadySeconds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testStrategy(deployment)
			d := newDeployment()
			s.PrepareForCreate(context.Background(), d)
			tc.mutate(d)
			errs := s.Validate(context.Background(), d)
			found := false
			for _, e := range errs {
				if e.Field == tc.field && strings.Contains(e.Error(), tc.detail) {
					found = true
				}
			}
			if !found {
				t.Errorf("errors %v, want one on %s saying %q", errs, tc.field, tc.detail)
			}
		})
	}

	// The selector is immutable.
	s := testStrategy(deployment)
	stored := newDeployment()
	created(t, s, stored)
	d := stored.DeepCopy()
	d.Spec.Selector.MatchLabels["tier"] = "front"
	d.Spec.Template.Labels["tier"] = "front"
	s.PrepareForUpdate(context.Background(), d, stored)
	errs := s.ValidateUpdate(context.Background(), d, stored)
	if len(errs) != 1 || errs[0].Field != "spec.selector" || !strings.Contains(errs[0].Error(), "field is immutable") {
		t.Errorf("changing the selector: %v, want spec.selector immutable", errs)
	}
}

// A status write keeps the spec and labels, and is checked by Kubernetes'
// status rules.
func TestDeploymentStatus(t *testing.T) {
	s := testStrategy(deployment)
	stored := newDeployment(func(d *appsv1.Deployment) { d.Labels = map[string]string{"app": "web"} })
	created(t, s, stored)
	status := &registry.StatusStrategy{Strategy: s, KeepMeta: []registry.MetaField{registry.MetaLabels}, ValidatesMeta: true,
		ValidateStatusUpdateFunc: func(_ context.Context, obj, old runtime.Object) field.ErrorList {
			return deployment.validateStatus(obj, old)
		}}

	d := stored.DeepCopy()
	d.Spec.Replicas = ptr.To[int32](9)
	d.Labels = map[string]string{"app": "other"}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1}
	status.PrepareForUpdate(context.Background(), d, stored)
	if *d.Spec.Replicas != 1 || d.Labels["app"] != "web" || d.Status.Replicas != 1 {
		t.Errorf("after a status write: replicas %d, labels %v, status.replicas %d; want 1, the stored labels, 1", *d.Spec.Replicas, d.Labels, d.Status.Replicas)
	}
	if errs := status.ValidateUpdate(context.Background(), d, stored); len(errs) > 0 {
		t.Errorf("valid status refused: %v", errs)
	}
	d.Status.AvailableReplicas = 3
	errs := status.ValidateUpdate(context.Background(), d, stored)
	if len(errs) == 0 || errs[0].Field != "status.availableReplicas" {
		t.Errorf("availableReplicas above replicas: %v, want an error on status.availableReplicas", errs)
	}
}

// A DaemonSet's templateGeneration, kept in apps/v1 as the
// deprecated.daemonset.template.generation annotation, starts at 1 and
// counts template changes only.
func TestDaemonSetTemplateGeneration(t *testing.T) {
	const annotation = "deprecated.daemonset.template.generation"
	s := testStrategy(daemonSet)
	stored := newDaemonSet()
	created(t, s, stored)
	if stored.Annotations[annotation] != "1" || stored.Generation != 1 {
		t.Fatalf("created: annotations %v, generation %d; want %s=1, 1", stored.Annotations, stored.Generation, annotation)
	}
	if stored.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || stored.Spec.RevisionHistoryLimit == nil || *stored.Spec.RevisionHistoryLimit != 10 {
		t.Errorf("created: update strategy %+v, revisionHistoryLimit %v; want RollingUpdate and 10", stored.Spec.UpdateStrategy, stored.Spec.RevisionHistoryLimit)
	}
	for _, tc := range []struct {
		name           string
		change         func(*appsv1.DaemonSet)
		wantGen        int64
		wantAnnotation string
	}{
		{"minReadySeconds", func(ds *appsv1.DaemonSet) { ds.Spec.MinReadySeconds = 5 }, 2, "1"},
		{"template", func(ds *appsv1.DaemonSet) { ds.Spec.Template.Spec.Containers[0].Image = "busybox" }, 2, "2"},
		{"the annotation itself", func(ds *appsv1.DaemonSet) { ds.Annotations[annotation] = "7" }, 1, "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := stored.DeepCopy()
			tc.change(ds)
			s.PrepareForUpdate(context.Background(), ds, stored)
			if ds.Generation != tc.wantGen || ds.Annotations[annotation] != tc.wantAnnotation {
				t.Errorf("generation %d, %s=%s; want %d, %s", ds.Generation, annotation, ds.Annotations[annotation], tc.wantGen, tc.wantAnnotation)
			}
			if errs := s.ValidateUpdate(context.Background(), ds, stored); len(errs) > 0 {
				t.Errorf("update refused: %v", errs)
			}
		})
	}
}

// A ControllerRevision's data must be a JSON object and may not change.
func TestControllerRevisionValidation(t *testing.T) {
	s := strategy(nil, controllerRevision, false)
	cr := &appsv1.ControllerRevision{ObjectMeta: metav1.ObjectMeta{Name: "agent-1", Namespace: "default", ResourceVersion: "1"}, Revision: 1,
		Data: runtime.RawExtension{Raw: []byte(`{"spec":{}}`)}}
	if errs := s.Validate(context.Background(), cr); len(errs) > 0 {
		t.Fatalf("valid revision refused: %v", errs)
	}
	bad := cr.DeepCopy()
	bad.Data.Raw = []byte(`[1]`)
	if errs := s.Validate(context.Background(), bad); len(errs) != 1 || errs[0].Field != "data" {
		t.Errorf("data not an object: %v, want one error on data", errs)
	}
	changed := cr.DeepCopy()
	changed.Data.Raw = []byte(`{"spec":{"x":1}}`)
	if errs := s.ValidateUpdate(context.Background(), changed, cr); len(errs) != 1 || errs[0].Field != "data" {
		t.Errorf("changing data: %v, want one error on data", errs)
	}
}

func equal(a, b any) bool { return apiequality.Semantic.DeepEqual(deref(a), deref(b)) }

// deref is what a pointer points at, for comparing and printing.
func deref(v any) any {
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && !rv.IsNil() {
		return rv.Elem().Interface()
	}
	return v
}
