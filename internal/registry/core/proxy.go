package core

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/util/proxy"
	"k8s.io/apiserver/pkg/registry/rest"

	apicore "github.com/duet-net/duet/internal/apis/core"
)

// AddProxies adds pods/proxy and services/proxy to the core/v1 storage:
// HTTP to a pod's port (or to a ready endpoint of a Service's port),
// through the agent of the pod's node, which dials the pod from the
// node's network namespace. kube-apiserver dials pods itself; Duet's
// server is not on the pods' network, its agents are.
func AddProxies(storage map[string]rest.Storage, conn AgentConnection) error {
	pods, ok := storage["pods"].(rest.Getter)
	if !ok {
		return fmt.Errorf("pod storage missing")
	}
	nodes, ok := storage["nodes"].(rest.Getter)
	if !ok {
		return fmt.Errorf("node storage missing")
	}
	services, ok := storage["services"].(rest.Getter)
	if !ok {
		return fmt.Errorf("service storage missing")
	}
	endpoints, ok := storage["endpoints"].(rest.Getter)
	if !ok {
		return fmt.Errorf("endpoints storage missing")
	}
	l := &locator{pods: pods, nodes: nodes, transport: conn.Transport}
	storage["pods/proxy"] = &podProxyREST{l}
	storage["services/proxy"] = &serviceProxyREST{l: l, services: services, endpoints: endpoints}
	return nil
}

// proxyMethods are the methods kube-apiserver proxies.
var proxyMethods = []string{"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}

// splitID reads a proxy request's name: NAME, NAME:PORT or SCHEME:NAME:PORT.
func splitID(id string) (scheme, name, port string, err error) {
	scheme, name, port, ok := utilnet.SplitSchemeNamePort(id)
	if !ok {
		return "", "", "", apierrors.NewBadRequest(fmt.Sprintf("invalid request %q: want NAME, NAME:PORT or SCHEME:NAME:PORT", id))
	}
	if scheme == "" {
		scheme = "http"
	}
	return scheme, name, port, nil
}

// podProxyLocation is where the agent of pod's node proxies to port of
// pod, with the request's path under it.
func (l *locator) podProxyLocation(ctx context.Context, pod *corev1.Pod, scheme string, port int, subpath string) (*url.URL, error) {
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("pod %s has completed (phase %s): nothing listens", pod.Name, pod.Status.Phase))
	}
	if pod.Status.PodIP == "" {
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("pod %s has no IP address yet", pod.Name))
	}
	u, err := l.agentURL(ctx, pod)
	if err != nil {
		return nil, err
	}
	u.Path = path.Join("/proxy", pod.Namespace, pod.Name, scheme, strconv.Itoa(port)) + "/" + strings.TrimPrefix(subpath, "/")
	return u, nil
}

func (l *locator) proxyHandler(location *url.URL, responder rest.Responder) http.Handler {
	h := proxy.NewUpgradeAwareHandler(location, l.transport, false, false, proxy.NewErrorResponder(responder))
	return h
}

type podProxyREST struct{ l *locator }

var _ rest.Connecter = &podProxyREST{}

func (r *podProxyREST) New() runtime.Object { return &corev1.PodProxyOptions{} }
func (r *podProxyREST) Destroy()            {}
func (r *podProxyREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &corev1.PodProxyOptions{}, true, "path"
}
func (r *podProxyREST) ConnectMethods() []string { return proxyMethods }

// Connect proxies to the pod's port: the one in the name, else its first
// container's first declared port, else the scheme's (80, 443), as
// kube-apiserver picks it. A port may be named by a container port's name.
func (r *podProxyREST) Connect(ctx context.Context, id string, obj runtime.Object, responder rest.Responder) (http.Handler, error) {
	opts, ok := obj.(*corev1.PodProxyOptions)
	if !ok {
		return nil, fmt.Errorf("invalid options object: %T", obj)
	}
	scheme, name, portStr, err := splitID(id)
	if err != nil {
		return nil, err
	}
	pod, err := r.l.pod(ctx, name)
	if err != nil {
		return nil, err
	}
	port, err := podPort(pod, scheme, portStr)
	if err != nil {
		return nil, err
	}
	location, err := r.l.podProxyLocation(ctx, pod, scheme, port, opts.Path)
	if err != nil {
		return nil, err
	}
	return r.l.proxyHandler(location, responder), nil
}

// podPort resolves a pods/proxy port: a number, a container port's name,
// or none.
func podPort(pod *corev1.Pod, scheme, port string) (int, error) {
	if port == "" {
		for _, c := range pod.Spec.Containers {
			if len(c.Ports) > 0 {
				return int(c.Ports[0].ContainerPort), nil
			}
		}
		if scheme == "https" {
			return 443, nil
		}
		return 80, nil
	}
	if n, err := strconv.ParseUint(port, 10, 16); err == nil && n > 0 {
		return int(n), nil
	}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == port {
				return int(p.ContainerPort), nil
			}
		}
	}
	return 0, apierrors.NewBadRequest(fmt.Sprintf("pod %s has no port %q: give a number or the name of a container port", pod.Name, port))
}

type serviceProxyREST struct {
	l                   *locator
	services, endpoints rest.Getter
}

var _ rest.Connecter = &serviceProxyREST{}

func (r *serviceProxyREST) New() runtime.Object { return &corev1.ServiceProxyOptions{} }
func (r *serviceProxyREST) Destroy()            {}
func (r *serviceProxyREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &corev1.ServiceProxyOptions{}, true, "path"
}
func (r *serviceProxyREST) ConnectMethods() []string { return proxyMethods }

// Connect proxies to a ready endpoint of the Service's port (named, or by
// number; the only port when none is given), picked at random, as
// kube-apiserver does: through the agent of the endpoint's pod.
func (r *serviceProxyREST) Connect(ctx context.Context, id string, obj runtime.Object, responder rest.Responder) (http.Handler, error) {
	opts, ok := obj.(*corev1.ServiceProxyOptions)
	if !ok {
		return nil, fmt.Errorf("invalid options object: %T", obj)
	}
	scheme, name, portStr, err := splitID(id)
	if err != nil {
		return nil, err
	}
	obj, err = r.services.Get(ctx, name, &metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var svc *corev1.Service
	switch o := obj.(type) {
	case *apicore.Service: // what Duet's service storage holds
		svc = o.ToV1()
	case *corev1.Service:
		svc = o
	default:
		return nil, fmt.Errorf("unexpected object %T for service %s", obj, name)
	}
	portName, err := servicePortName(svc, portStr)
	if err != nil {
		return nil, err
	}
	obj, err = r.endpoints.Get(ctx, name, &metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("no endpoints available for service %q", name))
	}
	if err != nil {
		return nil, err
	}
	//lint:ignore SA1019 the primary family's Endpoints name each ready pod and port, as kube-apiserver's proxy reads them.
	eps, ok := obj.(*corev1.Endpoints)
	if !ok {
		return nil, fmt.Errorf("unexpected object %T for endpoints %s", obj, name)
	}
	type candidate struct {
		pod  string
		port int
	}
	var cands []candidate
	for _, ss := range eps.Subsets {
		for _, p := range ss.Ports {
			if p.Name != portName {
				continue
			}
			for _, a := range ss.Addresses {
				if a.TargetRef != nil && a.TargetRef.Kind == "Pod" && a.TargetRef.Namespace == svc.Namespace {
					cands = append(cands, candidate{a.TargetRef.Name, int(p.Port)})
				}
			}
		}
	}
	rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	for _, c := range cands {
		pod, err := r.l.pod(ctx, c.pod)
		if err != nil || pod.Spec.NodeName == "" {
			continue
		}
		location, err := r.l.podProxyLocation(ctx, pod, scheme, c.port, opts.Path)
		if err != nil {
			continue
		}
		return r.l.proxyHandler(location, responder), nil
	}
	return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("no endpoints available for service %q", name))
}

// servicePortName is the name of the Service port a services/proxy request
// names by name or number ("" for the only, unnamed, port).
func servicePortName(svc *corev1.Service, port string) (string, error) {
	if port == "" {
		if len(svc.Spec.Ports) == 1 {
			return svc.Spec.Ports[0].Name, nil
		}
		return "", nil
	}
	if n, err := strconv.ParseInt(port, 10, 32); err == nil {
		for _, p := range svc.Spec.Ports {
			if int64(p.Port) == n {
				return p.Name, nil
			}
		}
		return "", apierrors.NewServiceUnavailable(fmt.Sprintf("no service port %d found for service %q", n, svc.Name))
	}
	for _, p := range svc.Spec.Ports {
		if p.Name == port {
			return p.Name, nil
		}
	}
	return "", apierrors.NewServiceUnavailable(fmt.Sprintf("no service port %q found for service %q", port, svc.Name))
}
