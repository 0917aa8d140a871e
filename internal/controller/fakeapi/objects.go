package fakeapi

import (
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Service returns a ClusterIP Service ns/name of the given families
// selecting app=<name>, with port "http" 80 → target port "http",
// changed by mutate.
func Service(ns, name string, families []v1.IPFamily, mutate ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID("svc-" + name), Labels: map[string]string{"team": "net"}},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			Selector:   map[string]string{"app": name},
			IPFamilies: families,
			ClusterIP:  "10.96.0.10",
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromString("http")}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

// Pod returns a running Pod ns/name labelled app=<app> on nodeName with
// the given IPs, whose container port "http" is httpPort (none if 0).
func Pod(ns, name, app, nodeName string, ready bool, httpPort int32, ips ...string) *v1.Pod {
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID("pod-" + name), Labels: map[string]string{"app": app}},
		Spec: v1.PodSpec{
			NodeName:   nodeName,
			Containers: []v1.Container{{Name: "c"}},
		},
		Status: v1.PodStatus{Phase: v1.PodRunning},
	}
	if httpPort != 0 {
		p.Spec.Containers[0].Ports = []v1.ContainerPort{{Name: "http", ContainerPort: httpPort, Protocol: v1.ProtocolTCP}}
	}
	SetReady(p, ready)
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, v1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

// Terminating marks p as being deleted.
func Terminating(p *v1.Pod) *v1.Pod {
	p.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	return p
}
