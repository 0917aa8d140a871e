// Package servicelinks makes the environment variables the kubelet gives
// every container about Services (the "service links", from Docker's
// container links): NAME_SERVICE_HOST and NAME_SERVICE_PORT, and the
// link variables NAME_PORT, NAME_PORT_<port>_<PROTO> and their _PROTO,
// _PORT and _ADDR. Programs find the API server through the kubernetes
// Service's (client-go's in-cluster config reads KUBERNETES_SERVICE_HOST
// and KUBERNETES_SERVICE_PORT), and old programs find their peers
// through the others.
//
// On a dual-stack cluster a variable holds one address: the Service's
// primary cluster IP (the first of clusterIPs), and an IPv6 one is
// bracketed in the URLs.
package servicelinks

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
)

// APIService is the Service of the API server, in the default namespace:
// every pod gets its variables, even with enableServiceLinks false.
const APIService = "kubernetes"

// Var is one variable.
type Var struct{ Name, Value string }

// PrimaryIP is the address a Service's variables hold: its first cluster
// IP, or "" when it has none (headless, ExternalName, not yet allocated).
func PrimaryIP(svc *corev1.Service) string {
	ip := svc.Spec.ClusterIP
	if len(svc.Spec.ClusterIPs) > 0 {
		ip = svc.Spec.ClusterIPs[0]
	}
	if ip == corev1.ClusterIPNone {
		return ""
	}
	return ip
}

// Of is one Service's variables in the order the kubelet makes them: the
// host and first port, each named port, then Docker's link variables
// (NAME_PORT for the first port, and four per port). A Service without a
// cluster IP or without ports has none.
func Of(svc *corev1.Service) []Var {
	ip := PrimaryIP(svc)
	if ip == "" || len(svc.Spec.Ports) == 0 {
		return nil
	}
	name := envName(svc.Name)
	out := []Var{
		{name + "_SERVICE_HOST", ip},
		{name + "_SERVICE_PORT", strconv.Itoa(int(svc.Spec.Ports[0].Port))},
	}
	for _, p := range svc.Spec.Ports {
		if p.Name != "" {
			out = append(out, Var{name + "_SERVICE_PORT_" + envName(p.Name), strconv.Itoa(int(p.Port))})
		}
	}
	for i, p := range svc.Spec.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		lower := strings.ToLower(string(proto))
		port := strconv.Itoa(int(p.Port))
		url := lower + "://" + net.JoinHostPort(ip, port)
		if i == 0 {
			out = append(out, Var{name + "_PORT", url})
		}
		link := fmt.Sprintf("%s_PORT_%s_%s", name, port, strings.ToUpper(string(proto)))
		out = append(out,
			Var{link, url},
			Var{link + "_PROTO", lower},
			Var{link + "_PORT", port},
			Var{link + "_ADDR", ip},
		)
	}
	return out
}

// envName is a Service's or port's name as a variable name. DNS labels
// have only lower-case letters, digits and '-'.
func envName(s string) string {
	return strings.ToUpper(strings.ReplaceAll(s, "-", "_"))
}

// Select picks, from services of any namespaces, those whose variables a
// pod of namespace ns gets, as the kubelet picks them: the API server's
// Service always, and with links enabled every Service of ns that has a
// cluster IP. A Service of ns named kubernetes then wins over the API
// server's. The result is sorted by name, so that where two Services'
// variable names clash the same one wins every time.
func Select(services []*corev1.Service, ns string, enableLinks bool) []*corev1.Service {
	chosen := map[string]*corev1.Service{}
	for _, s := range services {
		if PrimaryIP(s) == "" {
			continue
		}
		switch {
		case s.Namespace == ns && enableLinks:
			chosen[s.Name] = s
		case s.Namespace == metav1.NamespaceDefault && s.Name == APIService:
			if _, ok := chosen[s.Name]; !ok {
				chosen[s.Name] = s
			}
		}
	}
	out := make([]*corev1.Service, 0, len(chosen))
	for _, s := range chosen {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *corev1.Service) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Env is the variables of a pod of namespace ns, read from lister:
// later Services' values win a clash of names.
func Env(lister corelisters.ServiceLister, ns string, enableLinks bool) (map[string]string, error) {
	var services []*corev1.Service
	api, err := lister.Services(metav1.NamespaceDefault).Get(APIService)
	switch {
	case err == nil:
		services = append(services, api)
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("the %s Service: %w", APIService, err)
	}
	if enableLinks {
		own, err := lister.Services(ns).List(labels.Everything())
		if err != nil {
			return nil, fmt.Errorf("the Services of namespace %s: %w", ns, err)
		}
		services = append(services, own...)
	}
	env := map[string]string{}
	for _, s := range Select(services, ns, enableLinks) {
		for _, v := range Of(s) {
			env[v.Name] = v.Value
		}
	}
	return env, nil
}
