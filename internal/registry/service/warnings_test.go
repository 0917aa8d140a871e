package service

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/apis/core"
)

func TestWarnings(t *testing.T) {
	tests := []struct {
		name string
		svc  *core.Service
		want []string
	}{
		{name: "none for a plain Service", svc: newService(clusterIPs(v4IP))},
		{name: "a headless Service ignores external IPs and affinity",
			svc: newService(headless, func(s *core.Service) {
				s.Spec.ExternalIPs = []string{"192.0.2.10"}
				s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			}),
			want: []string{"spec.externalIPs is ignored for headless services", "spec.SessionAffinity is ignored for headless services"}},
		{name: "external IPs are deprecated",
			svc:  newService(func(s *core.Service) { s.Spec.ExternalIPs = []string{"192.0.2.10"} }),
			want: []string{"spec.externalIPs is deprecated and may no longer be implemented in some clusters"}},
		{name: "externalName on a ClusterIP Service is ignored",
			svc:  newService(func(s *core.Service) { s.Spec.ExternalName = "db.example.com" }),
			want: []string{`spec.externalName is ignored when spec.type is not "ExternalName"`}},
		{name: "PreferClose is deprecated",
			svc: newService(func(s *core.Service) {
				d := corev1.ServiceTrafficDistributionPreferClose
				s.Spec.TrafficDistribution = &d
			}),
			want: []string{`spec.trafficDistribution: "PreferClose" is deprecated; use "PreferSameZone"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Warnings(tt.svc)
			if len(got) != len(tt.want) {
				t.Fatalf("warnings %q, want %q", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("warning %d = %q, want %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}
