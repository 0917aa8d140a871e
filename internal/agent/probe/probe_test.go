package probe

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestRun(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.WriteHeader(http.StatusOK)
		case "/redirect":
			http.Redirect(w, r, "/ok", http.StatusFound)
		case "/header":
			if r.Header.Get("X-Probe") != "yes" {
				w.WriteHeader(http.StatusBadRequest)
			}
		default:
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	addr := netip.MustParseAddrPort(srv.Listener.Addr().String())
	port := int32(addr.Port())
	var d net.Dialer
	target := Target{
		PodIP: addr.Addr(),
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: port}},
		Dial:  d.DialContext,
		Exec: func(_ context.Context, argv []string) (int, error) {
			return strconv.Atoi(argv[0])
		},
	}
	closed := freePort(t)
	for _, tc := range []struct {
		name string
		p    corev1.ProbeHandler
		ok   bool
	}{
		{"http 200", corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ok", Port: intstr.FromInt32(port)}}, true},
		{"http named port", corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "ok", Port: intstr.FromString("http")}}, true},
		{"http redirect to 200", corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/redirect", Port: intstr.FromInt32(port)}}, true},
		{"http 500", corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/fail", Port: intstr.FromInt32(port)}}, false},
		{"http header", corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/header", Port: intstr.FromInt32(port), HTTPHeaders: []corev1.HTTPHeader{{Name: "X-Probe", Value: "yes"}}}}, true},
		{"http unknown port name", corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ok", Port: intstr.FromString("nope")}}, false},
		{"tcp open", corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(port)}}, true},
		{"tcp closed", corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(closed)}}, false},
		{"exec 0", corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"0"}}}, true},
		{"exec 1", corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"1"}}}, false},
		{"no handler", corev1.ProbeHandler{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Run(context.Background(), &corev1.Probe{ProbeHandler: tc.p}, target)
			if (err == nil) != tc.ok {
				t.Errorf("Run = %v, want success %v", err, tc.ok)
			}
		})
	}
}

// freePort is a loopback port nothing listens on.
func freePort(t *testing.T) int32 {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := int32(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	return p
}
