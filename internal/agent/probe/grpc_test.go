package probe

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
)

// TestGRPCProbe checks gRPC probes against a health server on loopback:
// SERVING succeeds; NOT_SERVING, an unknown service, a server without the
// health service, a closed port and a port out of range fail.
func TestGRPCProbe(t *testing.T) {
	serve := func(withHealth bool) int32 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		if withHealth {
			hs := health.NewServer()
			hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
			hs.SetServingStatus("db", healthpb.HealthCheckResponse_NOT_SERVING)
			healthpb.RegisterHealthServer(srv, hs)
		}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(srv.Stop)
		return int32(l.Addr().(*net.TCPAddr).Port)
	}
	port, bare, closed := serve(true), serve(false), freePort(t)
	str := func(s string) *string { return &s }
	for _, tt := range []struct {
		name string
		g    corev1.GRPCAction
		ok   bool
	}{
		{"serving", corev1.GRPCAction{Port: port}, true},
		{"named service serving", corev1.GRPCAction{Port: port, Service: str("")}, true},
		{"service not serving", corev1.GRPCAction{Port: port, Service: str("db")}, false},
		{"unknown service", corev1.GRPCAction{Port: port, Service: str("cache")}, false},
		{"server without the health service", corev1.GRPCAction{Port: bare}, false},
		{"connection refused", corev1.GRPCAction{Port: closed}, false},
		{"port out of range", corev1.GRPCAction{Port: 0}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &tt.g}, TimeoutSeconds: 5}
			err := Run(context.Background(), p, Target{PodIP: netip.MustParseAddr("127.0.0.1")})
			if (err == nil) != tt.ok {
				t.Errorf("Run = %v, want success %v", err, tt.ok)
			}
		})
	}
}

// TestGRPCProbeDialsThroughTarget checks that a gRPC probe connects with
// the target's dialer (the pod's namespace), to the pod's IP.
func TestGRPCProbeDialsThroughTarget(t *testing.T) {
	var mu sync.Mutex
	var dialled []string
	target := Target{
		PodIP: netip.MustParseAddr("fd00:10:244::7"),
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			mu.Lock()
			defer mu.Unlock()
			dialled = append(dialled, network+" "+address)
			return nil, net.UnknownNetworkError("test")
		},
	}
	p := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090}}, TimeoutSeconds: 1}
	if err := Run(context.Background(), p, target); err == nil {
		t.Fatal("Run succeeded though the dialer fails")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(dialled) == 0 || dialled[0] != "tcp [fd00:10:244::7]:9090" {
		t.Errorf("dialled %v, want tcp [fd00:10:244::7]:9090", dialled)
	}
}
