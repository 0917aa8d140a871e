package core

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestSplitID(t *testing.T) {
	for _, tc := range []struct{ id, scheme, name, port, err string }{
		{id: "web", scheme: "http", name: "web"},
		{id: "web:8080", scheme: "http", name: "web", port: "8080"},
		{id: "https:web:443", scheme: "https", name: "web", port: "443"},
		{id: "web:http", scheme: "http", name: "web", port: "http"},
		{id: "a:b:c:d", err: "invalid request"},
		{id: "ftp:web:21", err: "invalid request"},
	} {
		scheme, name, port, err := splitID(tc.id)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("splitID(%q): %v, want %q", tc.id, err, tc.err)
			}
			continue
		}
		if err != nil || scheme != tc.scheme || name != tc.name || port != tc.port {
			t.Errorf("splitID(%q) = %q %q %q %v", tc.id, scheme, name, port, err)
		}
	}
}

func TestPodPort(t *testing.T) {
	withPorts := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "a"},
		{Name: "b", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}}},
	}}}
	bare := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}}}}
	for _, tc := range []struct {
		pod          *corev1.Pod
		scheme, port string
		want         int
		err          bool
	}{
		{pod: withPorts, scheme: "http", want: 8080},
		{pod: withPorts, scheme: "http", port: "metrics", want: 9090},
		{pod: withPorts, scheme: "http", port: "1234", want: 1234},
		{pod: withPorts, scheme: "http", port: "nope", err: true},
		{pod: bare, scheme: "http", want: 80},
		{pod: bare, scheme: "https", want: 443},
		{pod: bare, scheme: "http", port: "0", err: true},
	} {
		got, err := podPort(tc.pod, tc.scheme, tc.port)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("podPort(%s, %q) = %d, %v; want %d (error %v)", tc.scheme, tc.port, got, err, tc.want, tc.err)
		}
	}
}

func TestServicePortName(t *testing.T) {
	two := &corev1.Service{Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}, {Name: "https", Port: 443}}}}
	one := &corev1.Service{Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}
	for _, tc := range []struct {
		svc        *corev1.Service
		port, want string
		err        bool
	}{
		{svc: two, port: "443", want: "https"},
		{svc: two, port: "http", want: "http"},
		{svc: two, port: "8080", err: true},
		{svc: two, port: "nope", err: true},
		{svc: one, port: "", want: ""},
		{svc: one, port: "80", want: ""},
	} {
		got, err := servicePortName(tc.svc, tc.port)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("servicePortName(%q) = %q, %v; want %q (error %v)", tc.port, got, err, tc.want, tc.err)
		}
	}
}
