package trim

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var deletedAt = metav1.Now()

func fullPod() *corev1.Pod {
	now := deletedAt
	grace := int64(30)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-1", Namespace: "default", UID: "u1", ResourceVersion: "42", Generation: 1,
			Labels:                     map[string]string{"app": "web"},
			Annotations:                map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
			ManagedFields:              []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
			DeletionTimestamp:          &now,
			DeletionGracePeriodSeconds: &grace,
			OwnerReferences:            []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web"}},
		},
		Spec: corev1.PodSpec{
			NodeName: "node1", NodeSelector: map[string]string{"zone": "a"}, SchedulerName: "default-scheduler",
			Hostname: "web-1", Subdomain: "web", RestartPolicy: corev1.RestartPolicyAlways,
			Volumes:     []corev1.Volume{{Name: "data"}},
			HostNetwork: true,
			Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{
				{TopologyKey: corev1.LabelHostname, LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
			}}},
			Tolerations:     []corev1.Toleration{{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}},
			SchedulingGates: []corev1.PodSchedulingGate{{Name: "wait"}},
			Priority:        ptr(int32(10)),
			Containers: []corev1.Container{{
				Name: "c", Image: "nginx", Command: []string{"nginx"}, Env: []corev1.EnvVar{{Name: "A", Value: "b"}},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
				},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}},
			}},
			InitContainers: []corev1.Container{{
				Name: "sidecar", Image: "envoy", RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways),
				Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 9901}},
			}},
		},
		Status: corev1.PodStatus{
			Phase:             corev1.PodRunning,
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			HostIP:            "203.0.113.1",
			PodIP:             "10.244.1.5",
			PodIPs:            []corev1.PodIP{{IP: "10.244.1.5"}, {IP: "fd00:10:244:1::5"}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "c", Ready: true}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

func TestPodKeepsWhatControllersRead(t *testing.T) {
	in := fullPod()
	want := fullPod()
	got, err := ForControllers(in)
	if err != nil {
		t.Fatal(err)
	}
	pod := got.(*corev1.Pod)
	checks := []struct {
		name      string
		got, want any
	}{
		{"name", pod.Name, want.Name},
		{"namespace", pod.Namespace, want.Namespace},
		{"uid", pod.UID, want.UID},
		{"resourceVersion", pod.ResourceVersion, want.ResourceVersion},
		{"labels", pod.Labels, want.Labels},
		{"deletionTimestamp", pod.DeletionTimestamp, want.DeletionTimestamp},
		{"ownerReferences", pod.OwnerReferences, want.OwnerReferences},
		{"nodeName", pod.Spec.NodeName, want.Spec.NodeName},
		{"nodeSelector", pod.Spec.NodeSelector, want.Spec.NodeSelector},
		{"schedulerName", pod.Spec.SchedulerName, want.Spec.SchedulerName},
		{"hostname", pod.Spec.Hostname, want.Spec.Hostname},
		{"subdomain", pod.Spec.Subdomain, want.Spec.Subdomain},
		{"container ports", pod.Spec.Containers[0].Ports, want.Spec.Containers[0].Ports},
		{"container name", pod.Spec.Containers[0].Name, want.Spec.Containers[0].Name},
		{"sidecar restartPolicy", pod.Spec.InitContainers[0].RestartPolicy, want.Spec.InitContainers[0].RestartPolicy},
		{"sidecar ports", pod.Spec.InitContainers[0].Ports, want.Spec.InitContainers[0].Ports},
		{"container resources", pod.Spec.Containers[0].Resources, want.Spec.Containers[0].Resources},
		{"hostNetwork", pod.Spec.HostNetwork, want.Spec.HostNetwork},
		{"affinity", pod.Spec.Affinity, want.Spec.Affinity},
		{"tolerations", pod.Spec.Tolerations, want.Spec.Tolerations},
		{"schedulingGates", pod.Spec.SchedulingGates, want.Spec.SchedulingGates},
		{"priority", pod.Spec.Priority, want.Spec.Priority},
		{"phase", pod.Status.Phase, want.Status.Phase},
		{"conditions", pod.Status.Conditions, want.Status.Conditions},
		{"podIP", pod.Status.PodIP, want.Status.PodIP},
		{"podIPs", pod.Status.PodIPs, want.Status.PodIPs},
		{"hostIP", pod.Status.HostIP, want.Status.HostIP},
		// dropped
		{"managedFields", pod.ManagedFields, []metav1.ManagedFieldsEntry(nil)},
		{"annotations", pod.Annotations, map[string]string(nil)},
		{"volumes", pod.Spec.Volumes, []corev1.Volume(nil)},
		{"image", pod.Spec.Containers[0].Image, ""},
		{"env", pod.Spec.Containers[0].Env, []corev1.EnvVar(nil)},
		{"containerStatuses", pod.Status.ContainerStatuses, []corev1.ContainerStatus(nil)},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestOtherObjectsLoseOnlyManagedFields(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{
		Name: "web", Annotations: map[string]string{"duet.dev/load-balancer-ips": "192.0.2.1"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
	}, Spec: corev1.ServiceSpec{ClusterIPs: []string{"10.96.0.10"}}}
	got, err := ForControllers(svc)
	if err != nil {
		t.Fatal(err)
	}
	out := got.(*corev1.Service)
	if out.ManagedFields != nil {
		t.Errorf("managedFields kept: %v", out.ManagedFields)
	}
	if out.Annotations["duet.dev/load-balancer-ips"] != "192.0.2.1" || len(out.Spec.ClusterIPs) != 1 {
		t.Errorf("service lost more than managedFields: %+v", out)
	}
	// Tombstones and other non-objects pass through.
	if v, err := ForControllers("not an object"); err != nil || v != "not an object" {
		t.Errorf("ForControllers(string) = %v, %v", v, err)
	}
}
