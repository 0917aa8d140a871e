package service

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/apis/core"
)

func withPorts(ports ...corev1.ServicePort) func(*core.Service) {
	return func(s *core.Service) { s.Spec.Ports = ports }
}

func TestNodePorts(t *testing.T) {
	ctx := context.Background()
	newAllocs := func(t *testing.T) (*Allocators, *alloc.PortRange) {
		a, _ := newAllocators(t, shapeByName(t, "IPv4,IPv6"))
		r, err := alloc.NewPortRange(30000, 30099, alloc.NewMemStore())
		if err != nil {
			t.Fatal(err)
		}
		a.SetNodePorts(r)
		return a, r
	}
	tcp := func(port, nodePort int32) corev1.ServicePort {
		return corev1.ServicePort{Name: "p" + string(rune('a'+port%26)), Protocol: corev1.ProtocolTCP, Port: port, NodePort: nodePort}
	}

	t.Run("drawn and requested", func(t *testing.T) {
		a, r := newAllocs(t)
		svc := newService(typ(corev1.ServiceTypeNodePort), withPorts(tcp(80, 0), tcp(81, 30042)))
		txn, err := a.AllocateCreate(ctx, svc, false)
		if err != nil {
			t.Fatal(err)
		}
		txn.Commit()
		np := svc.Spec.Ports[0].NodePort
		if np < 30000 || np > 30099 || np == 30042 || !r.Has(int(np)) || !r.Has(30042) {
			t.Fatalf("node ports %d, 30042 not both held", np)
		}
		// The same port asked for again is refused with Kubernetes' words.
		other := newService(named("default", "other"), typ(corev1.ServiceTypeNodePort), withPorts(tcp(80, 30042)))
		_, err = a.AllocateCreate(ctx, other, false)
		if err == nil || !strings.Contains(err.Error(), `spec.ports[0].nodePort: Invalid value: 30042: provided port is already allocated`) {
			t.Fatalf("duplicate node port: %v", err)
		}
		out := newService(named("default", "out"), typ(corev1.ServiceTypeNodePort), withPorts(tcp(80, 31000)))
		_, err = a.AllocateCreate(ctx, out, false)
		if err == nil || !strings.Contains(err.Error(), "provided port is not in the valid range. The range of valid ports is 30000-30099") {
			t.Fatalf("out of range node port: %v", err)
		}
		if r.Used() != 2 {
			t.Fatalf("refused creates left %d ports held, want 2", r.Used())
		}
		if err := a.Release(ctx, svc); err != nil {
			t.Fatal(err)
		}
		if r.Used() != 0 {
			t.Fatalf("after delete %d ports held", r.Used())
		}
	})

	t.Run("one port number over two protocols shares a node port", func(t *testing.T) {
		a, r := newAllocs(t)
		udp := tcp(53, 0)
		udp.Protocol, udp.Name = corev1.ProtocolUDP, "dns-udp"
		svc := newService(typ(corev1.ServiceTypeNodePort), withPorts(tcp(53, 0), udp))
		if _, err := a.AllocateCreate(ctx, svc, false); err != nil {
			t.Fatal(err)
		}
		if p := svc.Spec.Ports; p[0].NodePort != p[1].NodePort || r.Used() != 1 {
			t.Fatalf("node ports %d and %d, %d held", p[0].NodePort, p[1].NodePort, r.Used())
		}
	})

	t.Run("update to ClusterIP releases on commit, a failed update keeps them", func(t *testing.T) {
		a, r := newAllocs(t)
		old := newService(typ(corev1.ServiceTypeNodePort), withPorts(tcp(80, 0)))
		txn, err := a.AllocateCreate(ctx, old, false)
		if err != nil {
			t.Fatal(err)
		}
		txn.Commit()
		upd := old.DeepCopy()
		upd.Spec.Type = corev1.ServiceTypeClusterIP
		txn, err = a.AllocateUpdate(ctx, upd, old, false)
		if err != nil {
			t.Fatal(err)
		}
		if upd.Spec.Ports[0].NodePort != 0 {
			t.Fatalf("ClusterIP kept node port %d", upd.Spec.Ports[0].NodePort)
		}
		txn.Revert()
		if r.Used() != 1 {
			t.Fatal("a reverted update released the node port")
		}
		txn, _ = a.AllocateUpdate(ctx, upd, old, false)
		txn.Commit()
		if r.Used() != 0 {
			t.Fatal("a committed update to ClusterIP kept the node port")
		}
	})

	t.Run("re-applying without nodePort keeps it; a new port gets one", func(t *testing.T) {
		a, r := newAllocs(t)
		old := newService(typ(corev1.ServiceTypeNodePort), withPorts(tcp(80, 0)))
		if _, err := a.AllocateCreate(ctx, old, false); err != nil {
			t.Fatal(err)
		}
		upd := newService(typ(corev1.ServiceTypeNodePort), withPorts(tcp(80, 0), tcp(90, 0)))
		upd.ResourceVersion = old.ResourceVersion
		txn, err := a.AllocateUpdate(ctx, upd, old, false)
		if err != nil {
			t.Fatal(err)
		}
		txn.Commit()
		if upd.Spec.Ports[0].NodePort != old.Spec.Ports[0].NodePort || upd.Spec.Ports[1].NodePort == 0 || r.Used() != 2 {
			t.Fatalf("ports %+v, %d held", upd.Spec.Ports, r.Used())
		}
	})

	t.Run("LoadBalancer without node ports", func(t *testing.T) {
		a, r := newAllocs(t)
		f := false
		svc := newService(typ(corev1.ServiceTypeLoadBalancer), withPorts(tcp(80, 0)), func(s *core.Service) { s.Spec.AllocateLoadBalancerNodePorts = &f })
		if _, err := a.AllocateCreate(ctx, svc, false); err != nil {
			t.Fatal(err)
		}
		if svc.Spec.Ports[0].NodePort != 0 || r.Used() != 0 {
			t.Fatalf("allocateLoadBalancerNodePorts=false still drew %d", svc.Spec.Ports[0].NodePort)
		}
	})

	t.Run("dry run takes nothing", func(t *testing.T) {
		a, r := newAllocs(t)
		svc := newService(typ(corev1.ServiceTypeNodePort), withPorts(tcp(80, 0), tcp(81, 30001)))
		if _, err := a.AllocateCreate(ctx, svc, true); err != nil {
			t.Fatal(err)
		}
		if r.Used() != 0 {
			t.Fatalf("dry run took %d ports", r.Used())
		}
	})
}
