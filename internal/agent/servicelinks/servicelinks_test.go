package servicelinks

import (
	"maps"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

func svc(ns, name string, ips []string, ports ...corev1.ServicePort) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{ClusterIPs: ips, Ports: ports}}
	if len(ips) > 0 {
		s.Spec.ClusterIP = ips[0]
	}
	return s
}

func port(name string, n int32, proto corev1.Protocol) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: n, Protocol: proto}
}

func TestOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		svc  *corev1.Service
		want []Var
	}{
		{
			name: "IPv4 with one unnamed TCP port",
			svc:  svc("ns", "web", []string{"10.96.0.10"}, port("", 80, corev1.ProtocolTCP)),
			want: []Var{
				{"WEB_SERVICE_HOST", "10.96.0.10"}, {"WEB_SERVICE_PORT", "80"},
				{"WEB_PORT", "tcp://10.96.0.10:80"},
				{"WEB_PORT_80_TCP", "tcp://10.96.0.10:80"}, {"WEB_PORT_80_TCP_PROTO", "tcp"},
				{"WEB_PORT_80_TCP_PORT", "80"}, {"WEB_PORT_80_TCP_ADDR", "10.96.0.10"},
			},
		},
		{
			name: "dual-stack IPv6 primary: the first cluster IP, bracketed in URLs",
			svc:  svc("ns", "web", []string{"fd00:10:96::a", "10.96.0.10"}, port("http", 80, corev1.ProtocolTCP)),
			want: []Var{
				{"WEB_SERVICE_HOST", "fd00:10:96::a"}, {"WEB_SERVICE_PORT", "80"}, {"WEB_SERVICE_PORT_HTTP", "80"},
				{"WEB_PORT", "tcp://[fd00:10:96::a]:80"},
				{"WEB_PORT_80_TCP", "tcp://[fd00:10:96::a]:80"}, {"WEB_PORT_80_TCP_PROTO", "tcp"},
				{"WEB_PORT_80_TCP_PORT", "80"}, {"WEB_PORT_80_TCP_ADDR", "fd00:10:96::a"},
			},
		},
		{
			name: "dashes become underscores; named ports; no protocol means TCP; UDP lower-case in URLs",
			svc:  svc("ns", "kube-dns", []string{"10.96.0.53"}, port("dns", 53, corev1.ProtocolUDP), port("dns-tcp", 53, "")),
			want: []Var{
				{"KUBE_DNS_SERVICE_HOST", "10.96.0.53"}, {"KUBE_DNS_SERVICE_PORT", "53"},
				{"KUBE_DNS_SERVICE_PORT_DNS", "53"}, {"KUBE_DNS_SERVICE_PORT_DNS_TCP", "53"},
				{"KUBE_DNS_PORT", "udp://10.96.0.53:53"},
				{"KUBE_DNS_PORT_53_UDP", "udp://10.96.0.53:53"}, {"KUBE_DNS_PORT_53_UDP_PROTO", "udp"},
				{"KUBE_DNS_PORT_53_UDP_PORT", "53"}, {"KUBE_DNS_PORT_53_UDP_ADDR", "10.96.0.53"},
				{"KUBE_DNS_PORT_53_TCP", "tcp://10.96.0.53:53"}, {"KUBE_DNS_PORT_53_TCP_PROTO", "tcp"},
				{"KUBE_DNS_PORT_53_TCP_PORT", "53"}, {"KUBE_DNS_PORT_53_TCP_ADDR", "10.96.0.53"},
			},
		},
		{
			name: "only clusterIP set (an object from before dual-stack)",
			svc: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "old"},
				Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.7", Ports: []corev1.ServicePort{port("", 8080, corev1.ProtocolSCTP)}}},
			want: []Var{
				{"OLD_SERVICE_HOST", "10.96.0.7"}, {"OLD_SERVICE_PORT", "8080"},
				{"OLD_PORT", "sctp://10.96.0.7:8080"},
				{"OLD_PORT_8080_SCTP", "sctp://10.96.0.7:8080"}, {"OLD_PORT_8080_SCTP_PROTO", "sctp"},
				{"OLD_PORT_8080_SCTP_PORT", "8080"}, {"OLD_PORT_8080_SCTP_ADDR", "10.96.0.7"},
			},
		},
		{name: "headless has none", svc: svc("ns", "h", []string{"None"}, port("", 80, corev1.ProtocolTCP))},
		{name: "no cluster IP yet has none", svc: svc("ns", "x", nil, port("", 80, corev1.ProtocolTCP))},
		{name: "no ports has none", svc: svc("ns", "x", []string{"10.96.0.9"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Of(tc.svc); !slices.Equal(got, tc.want) {
				t.Errorf("Of = %v\nwant %v", got, tc.want)
			}
		})
	}
}

func TestSelect(t *testing.T) {
	api := svc("default", "kubernetes", []string{"10.96.0.1", "fd00:10:96::1"}, port("https", 443, corev1.ProtocolTCP))
	web := svc("app", "web", []string{"10.96.0.20"}, port("", 80, corev1.ProtocolTCP))
	other := svc("other", "db", []string{"10.96.0.30"}, port("", 5432, corev1.ProtocolTCP))
	defaultWeb := svc("default", "web", []string{"10.96.0.40"}, port("", 80, corev1.ProtocolTCP))
	headless := svc("app", "peers", []string{"None"}, port("", 80, corev1.ProtocolTCP))
	ownAPI := svc("app", "kubernetes", []string{"10.96.0.50"}, port("", 443, corev1.ProtocolTCP))
	all := []*corev1.Service{api, web, other, defaultWeb, headless}
	names := func(l []*corev1.Service) []string {
		var out []string
		for _, s := range l {
			out = append(out, s.Namespace+"/"+s.Name)
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		services []*corev1.Service
		ns       string
		links    bool
		want     []string
	}{
		{"links on: the API server's and the namespace's own with an IP", all, "app", true, []string{"default/kubernetes", "app/web"}},
		{"links off: only the API server's", all, "app", false, []string{"default/kubernetes"}},
		{"a pod of default sees default's Services", all, "default", true, []string{"default/kubernetes", "default/web"}},
		{"links off in default: still only the API server's", all, "default", false, []string{"default/kubernetes"}},
		{"the namespace's own kubernetes wins, listed after", append(slices.Clone(all), ownAPI), "app", true, []string{"app/kubernetes", "app/web"}},
		{"the namespace's own kubernetes wins, listed before", append([]*corev1.Service{ownAPI}, all...), "app", true, []string{"app/kubernetes", "app/web"}},
		{"links off: the namespace's own kubernetes is not the API server's", append(slices.Clone(all), ownAPI), "app", false, []string{"default/kubernetes"}},
		{"no API server Service", []*corev1.Service{web}, "app", false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := names(Select(tc.services, tc.ns, tc.links))
			if !slices.Equal(got, tc.want) {
				t.Errorf("Select = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestEnv(t *testing.T) {
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, s := range []*corev1.Service{
		svc("default", "kubernetes", []string{"fd00:10:96::1", "10.96.0.1"}, port("https", 443, corev1.ProtocolTCP)),
		svc("app", "web", []string{"10.96.0.20", "fd00:10:96::20"}, port("", 80, corev1.ProtocolTCP)),
		svc("other", "db", []string{"10.96.0.30"}, port("", 5432, corev1.ProtocolTCP)),
	} {
		if err := idx.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	lister := corelisters.NewServiceLister(idx)
	on, err := Env(lister, "app", true)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "443", "KUBERNETES_SERVICE_PORT_HTTPS": "443",
		"KUBERNETES_PORT": "tcp://[fd00:10:96::1]:443", "WEB_SERVICE_HOST": "10.96.0.20", "WEB_PORT_80_TCP_ADDR": "10.96.0.20",
	} {
		if on[k] != want {
			t.Errorf("links on: %s = %q, want %q", k, on[k], want)
		}
	}
	if _, ok := on["DB_SERVICE_HOST"]; ok {
		t.Errorf("links on: another namespace's Service is in the environment")
	}
	off, err := Env(lister, "app", false)
	if err != nil {
		t.Fatal(err)
	}
	api := maps.Clone(on)
	maps.DeleteFunc(api, func(k, _ string) bool { return k[:4] == "WEB_" })
	if !maps.Equal(off, api) || len(off) != 8 {
		t.Errorf("links off = %v, want only the kubernetes Service's 8 variables %v", off, api)
	}
}
