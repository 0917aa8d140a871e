package pods

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestNotReadyBeforePodCIDRs checks, without root, that a manager refuses
// pods until it has valid pod CIDRs, and that bad CIDRs leave it not ready.
func TestNotReadyBeforePodCIDRs(t *testing.T) {
	tests := []struct {
		name  string
		cidrs []netip.Prefix
	}{
		{"no call", nil},
		{"two of one family", []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("10.245.0.0/24")}},
		{"not masked", []netip.Prefix{netip.MustParsePrefix("10.244.0.1/24"), netip.MustParsePrefix("fd00:10:244::/64")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &Manager{NodeName: "n1", NodeNS: "/nonexistent", StateDir: t.TempDir(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			if tt.cidrs != nil {
				if err := m.SetPodCIDRs(tt.cidrs); err == nil {
					t.Fatalf("SetPodCIDRs(%v) succeeded, want an error", tt.cidrs)
				}
			}
			if m.Ready() {
				t.Fatal("Ready() = true without valid pod CIDRs")
			}
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default", UID: "u1"}, Spec: corev1.PodSpec{NodeName: "n1"}}
			if err := m.Sync(context.Background(), pod.UID, pod); err == nil {
				t.Fatal("Sync before Ready succeeded, want an error")
			}
		})
	}
}
