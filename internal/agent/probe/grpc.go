package probe

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
)

// grpcHealth calls the gRPC Health Checking Protocol's Check on the pod's
// port, in plain text as the kubelet does (a gRPC probe names no host and
// no TLS), and succeeds on SERVING only: NOT_SERVING, an unknown service
// and a server without the health service all fail.
func grpcHealth(ctx context.Context, g *corev1.GRPCAction, t Target) error {
	if g.Port < 1 || g.Port > 65535 {
		return fmt.Errorf("grpc port %d is out of range", g.Port)
	}
	addr := net.JoinHostPort(t.PodIP.String(), strconv.Itoa(int(g.Port)))
	service := ""
	if g.Service != nil {
		service = *g.Service
	}
	// passthrough: the address is dialled as it is, through t's dialer,
	// with no resolver of its own.
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return t.dial(ctx, "tcp", a) }),
		grpc.WithUserAgent("kube-probe/1.37"))
	if err != nil {
		return fmt.Errorf("grpc probe of %s: %w", addr, err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return fmt.Errorf("grpc probe of %s, service %q: %w", addr, service, err)
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("grpc probe of %s, service %q: status %s", addr, service, s)
	}
	return nil
}
