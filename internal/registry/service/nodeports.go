package service

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/apis/core"
)

// SetNodePorts gives the allocators the node port range; without one,
// NodePort and LoadBalancer Services keep whatever node ports they carry.
func (a *Allocators) SetNodePorts(r *alloc.PortRange) { a.ports = r }

// allocatesNodePorts reports whether the server draws node ports for svc:
// NodePort Services always, LoadBalancer ones unless
// allocateLoadBalancerNodePorts is false (then only requested ones are
// taken, as in Kubernetes).
func allocatesNodePorts(svc *core.Service) bool {
	switch svc.Spec.Type {
	case corev1.ServiceTypeNodePort:
		return true
	case corev1.ServiceTypeLoadBalancer:
		return svc.Spec.AllocateLoadBalancerNodePorts == nil || *svc.Spec.AllocateLoadBalancerNodePorts
	}
	return false
}

// nodePortsOf is the set of node ports svc holds, the health check node
// port included.
func nodePortsOf(svc *core.Service) map[int]bool {
	out := map[int]bool{}
	if !needsNodePort(svc) {
		return out
	}
	for _, p := range svc.Spec.Ports {
		if p.NodePort != 0 {
			out[int(p.NodePort)] = true
		}
	}
	if needsHealthCheckNodePort(svc) && svc.Spec.HealthCheckNodePort != 0 {
		out[int(svc.Spec.HealthCheckNodePort)] = true
	}
	return out
}

// allocNodePorts takes the node ports newSvc needs and oldSvc (nil on
// create) did not hold: the requested ones as they are, drawn ones for
// ports that have none. A port number that serves several protocols shares
// one node port, as in Kubernetes. It records what it took in t, and what
// newSvc gives up (released on Commit).
func (a *Allocators) allocNodePorts(t *txn, newSvc, oldSvc *core.Service, dryRun bool) error {
	if a.ports == nil {
		return nil
	}
	held := map[int]bool{}
	if oldSvc != nil {
		held = nodePortsOf(oldSvc)
	}
	var taken []int
	fail := func(err error) error {
		a.releasePorts(t.ctx, taken)
		return err
	}
	take := func(path *field.Path, port int32) error {
		if held[int(port)] {
			return nil
		}
		var err error
		switch {
		case dryRun && (int(port) < a.ports.Base() || int(port) > a.ports.End()):
			err = alloc.ErrNotInRange
		case dryRun && a.ports.Has(int(port)):
			err = alloc.ErrAllocated
		case dryRun:
			return nil
		default:
			err = a.ports.Allocate(t.ctx, int(port))
		}
		switch {
		case err == nil:
			taken = append(taken, int(port))
			held[int(port)] = true
			return nil
		case errors.Is(err, alloc.ErrAllocated):
			return apierrors.NewInvalid(serviceKind, newSvc.Name, field.ErrorList{field.Invalid(path, port, "provided port is already allocated")})
		case errors.Is(err, alloc.ErrNotInRange):
			return apierrors.NewInvalid(serviceKind, newSvc.Name, field.ErrorList{field.Invalid(path, port,
				fmt.Sprintf("provided port is not in the valid range. The range of valid ports is %s", a.ports))})
		default:
			return apierrors.NewInternalError(fmt.Errorf("allocating node port %d: %w", port, err))
		}
	}
	next := func() (int32, error) {
		if dryRun {
			return 0, nil
		}
		p, err := a.ports.AllocateNext(t.ctx)
		if err != nil {
			return 0, apierrors.NewInternalError(fmt.Errorf("failed to allocate a nodePort: %w", err))
		}
		taken = append(taken, p)
		held[p] = true
		return int32(p), nil
	}

	if needsNodePort(newSvc) {
		portsPath := field.NewPath("spec", "ports")
		// Requested ones first, so that a drawn port never takes one a
		// later entry asked for.
		for i, p := range newSvc.Spec.Ports {
			if p.NodePort != 0 {
				if err := take(portsPath.Index(i).Child("nodePort"), p.NodePort); err != nil {
					return fail(err)
				}
			}
		}
		if allocatesNodePorts(newSvc) {
			for i := range newSvc.Spec.Ports {
				p := &newSvc.Spec.Ports[i]
				if p.NodePort != 0 {
					continue
				}
				if shared := sameNumberNodePort(newSvc.Spec.Ports, i); shared != 0 {
					p.NodePort = shared
					continue
				}
				np, err := next()
				if err != nil {
					return fail(err)
				}
				p.NodePort = np
			}
		}
		if needsHealthCheckNodePort(newSvc) {
			hc := &newSvc.Spec.HealthCheckNodePort
			if *hc != 0 {
				if err := take(field.NewPath("spec", "healthCheckNodePort"), *hc); err != nil {
					return fail(err)
				}
			} else {
				np, err := next()
				if err != nil {
					return fail(err)
				}
				*hc = np
			}
		}
	}
	t.allocatedPorts = append(t.allocatedPorts, taken...)
	if oldSvc != nil && !dryRun {
		now := nodePortsOf(newSvc)
		for p := range nodePortsOf(oldSvc) {
			if !now[p] {
				t.releasePorts = append(t.releasePorts, p)
			}
		}
	}
	return nil
}

// sameNumberNodePort returns the node port already given to another port
// of the same number (another protocol), if any.
func sameNumberNodePort(ports []corev1.ServicePort, i int) int32 {
	for j, p := range ports {
		if j != i && p.Port == ports[i].Port && p.Protocol != ports[i].Protocol && p.NodePort != 0 {
			return p.NodePort
		}
	}
	return 0
}

func (a *Allocators) releasePorts(ctx context.Context, ports []int) {
	if a.ports == nil {
		return
	}
	for _, p := range ports {
		if err := a.ports.Release(ctx, p); err != nil {
			// The repair loop reclaims what is left behind.
			klog.ErrorS(err, "Failed to release a node port", "port", p)
		}
	}
}
