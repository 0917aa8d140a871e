package probe

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/duet-net/duet/internal/netns"
	"github.com/duet-net/duet/internal/testutil/roottest"
)

// TestProbesDialInsideThePodNamespace checks, as root, that httpGet,
// tcpSocket and grpc probes reach servers that listen only inside a pod's
// network namespace, and that the same probes from the agent's namespace
// do not.
func TestProbesDialInsideThePodNamespace(t *testing.T) {
	name := roottest.NetNS(t, "duet-probe-", "pod")
	listen := func() net.Listener {
		var l net.Listener
		roottest.Do(t, name, func() error {
			var err error
			l, err = net.Listen("tcp", "127.0.0.1:0")
			return err
		})
		return l
	}
	web := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
	hl := listen()
	go func() { _ = web.Serve(hl) }()
	defer web.Close()
	g := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	gl := listen()
	go func() { _ = g.Serve(gl) }()
	defer g.Stop()

	port := intstr.FromInt(hl.Addr().(*net.TCPAddr).Port)
	loopback := netip.MustParseAddr("127.0.0.1")
	inPod := Target{PodIP: loopback, Dial: NetNSDial(netns.Path(name))}
	fromAgent := Target{PodIP: loopback, Dial: NetNSDial("")}
	for what, h := range map[string]corev1.ProbeHandler{
		"httpGet":   {HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: port}},
		"tcpSocket": {TCPSocket: &corev1.TCPSocketAction{Port: port}},
		"grpc":      {GRPC: &corev1.GRPCAction{Port: int32(gl.Addr().(*net.TCPAddr).Port)}},
	} {
		p := &corev1.Probe{ProbeHandler: h, TimeoutSeconds: 5}
		if err := Run(context.Background(), p, inPod); err != nil {
			t.Errorf("%s inside the pod's namespace: %v, want success", what, err)
		}
		if err := Run(context.Background(), p, fromAgent); err == nil {
			t.Errorf("%s from the agent's namespace succeeded; the server listens only in the pod's", what)
		}
	}
}
