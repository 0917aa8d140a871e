package streaming

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/duet-net/duet/internal/agent/crilog"
	"github.com/duet-net/duet/internal/pki"
)

const (
	// idleTimeout closes a stream session with no traffic for this long,
	// the kubelet's --streaming-connection-idle-timeout default.
	idleTimeout = 4 * time.Hour
	// streamCreationTimeout bounds how long a client may take to open its
	// streams after the upgrade.
	streamCreationTimeout = remotecommand.DefaultStreamCreationTimeout
)

// Handler serves the agent's API without authentication (Serve adds it):
//
//	GET|POST /exec/NAMESPACE/POD/CONTAINER?command=...&input=1&output=1&error=1&tty=1
//	GET|POST /attach/NAMESPACE/POD/CONTAINER?input=1&output=1&error=1&tty=1
//	GET|POST /portforward/NAMESPACE/POD[?port=P]
//	GET      /containerLogs/NAMESPACE/POD/CONTAINER?follow=&previous=&tailLines=&sinceSeconds=&sinceTime=&timestamps=&limitBytes=
//	ANY      /proxy/NAMESPACE/POD/SCHEME/PORT/PATH (when rt is a PodDialer)
func Handler(rt Runtime, log *slog.Logger) http.Handler {
	h := &handler{rt: rt, log: log}
	mux := http.NewServeMux()
	for _, m := range []string{"GET", "POST"} {
		mux.HandleFunc(m+" /exec/{namespace}/{pod}/{container}", h.exec)
		mux.HandleFunc(m+" /attach/{namespace}/{pod}/{container}", h.attach)
		mux.HandleFunc(m+" /portforward/{namespace}/{pod}", h.portForward)
	}
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", h.logs)
	if d, ok := rt.(PodDialer); ok {
		mux.HandleFunc(proxyPath+"{path...}", h.proxy(d))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	return mux
}

type handler struct {
	rt  Runtime
	log *slog.Logger
}

func containerOf(r *http.Request) ContainerRef {
	return ContainerRef{PodRef: PodRef{Namespace: r.PathValue("namespace"), Name: r.PathValue("pod")}, Container: r.PathValue("container")}
}

func (h *handler) exec(w http.ResponseWriter, r *http.Request) {
	c := containerOf(r)
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		writeError(w, BadRequest("%v", err))
		return
	}
	cmd := r.URL.Query()["command"]
	if len(cmd) == 0 {
		writeError(w, BadRequest("no command given"))
		return
	}
	if err := h.rt.Check(c.PodRef, c.Container); err != nil {
		writeError(w, err)
		return
	}
	h.log.Info("exec", "pod", c.PodRef.String(), "container", c.Container, "command", cmd, "tty", opts.TTY)
	remotecommand.ServeExec(w, r, sessions{h.rt}, c.PodRef.String(), "", c.Container, cmd, opts, idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (h *handler) attach(w http.ResponseWriter, r *http.Request) {
	c := containerOf(r)
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		writeError(w, BadRequest("%v", err))
		return
	}
	if err := h.rt.Check(c.PodRef, c.Container); err != nil {
		writeError(w, err)
		return
	}
	h.log.Info("attach", "pod", c.PodRef.String(), "container", c.Container, "tty", opts.TTY)
	remotecommand.ServeAttach(w, r, sessions{h.rt}, c.PodRef.String(), "", c.Container, opts, idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (h *handler) portForward(w http.ResponseWriter, r *http.Request) {
	pod := PodRef{Namespace: r.PathValue("namespace"), Name: r.PathValue("pod")}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		writeError(w, BadRequest("%v", err))
		return
	}
	if err := h.rt.Check(pod, ""); err != nil {
		writeError(w, err)
		return
	}
	h.log.Info("port-forward", "pod", pod.String())
	portforward.ServePortForward(w, r, forwarder{h.rt, pod}, pod.String(), "", opts, idleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

func (h *handler) logs(w http.ResponseWriter, r *http.Request) {
	c := containerOf(r)
	opts, err := ParseLogOptions(r.URL.RawQuery)
	if err != nil {
		writeError(w, BadRequest("%v", err))
		return
	}
	f, err := h.rt.LogFile(c, opts.Previous)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	var out io.Writer = w
	if opts.Follow {
		out = flushWriter{w, http.NewResponseController(w)}
	}
	err = crilog.Read(r.Context(), f.Path, crilog.NewReadOptions(opts, time.Now()), f.Running, out, out)
	if err != nil && r.Context().Err() == nil {
		// Headers are out: all that is left is to end the body early.
		h.log.Warn("serving container log", "pod", c.PodRef.String(), "container", c.Container, "err", err)
	}
}

// flushWriter sends each write at once, so a follower sees lines as they
// are written.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// ParseLogOptions reads a containerLogs query (the PodLogOptions fields
// the API server sends) and names the parameter and the reason when one
// is wrong.
func ParseLogOptions(rawQuery string) (*corev1.PodLogOptions, error) {
	q, err := parseQuery(rawQuery)
	if err != nil {
		return nil, err
	}
	o := &corev1.PodLogOptions{}
	for _, b := range []struct {
		name string
		into *bool
	}{{"follow", &o.Follow}, {"previous", &o.Previous}, {"timestamps", &o.Timestamps}, {"insecureSkipTLSVerifyBackend", &o.InsecureSkipTLSVerifyBackend}} {
		if v, ok := q[b.name]; ok {
			if *b.into, err = strconv.ParseBool(v); err != nil {
				return nil, fmt.Errorf("%s=%q: not a boolean", b.name, v)
			}
		}
	}
	for _, n := range []struct {
		name string
		into **int64
		min  int64
	}{{"tailLines", &o.TailLines, 0}, {"limitBytes", &o.LimitBytes, 1}, {"sinceSeconds", &o.SinceSeconds, 1}} {
		if v, ok := q[n.name]; ok {
			i, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%s=%q: not an integer", n.name, v)
			}
			if i < n.min {
				return nil, fmt.Errorf("%s=%d: must be at least %d", n.name, i, n.min)
			}
			*n.into = &i
		}
	}
	if v, ok := q["sinceTime"]; ok {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return nil, fmt.Errorf("sinceTime=%q: not an RFC 3339 time", v)
		}
		o.SinceTime = &metav1.Time{Time: t}
	}
	if o.SinceSeconds != nil && o.SinceTime != nil {
		return nil, errors.New("sinceSeconds and sinceTime: at most one may be given")
	}
	return o, nil
}

// parseQuery is url.ParseQuery keeping the last value of each key.
func parseQuery(raw string) (map[string]string, error) {
	vals, err := url.ParseQuery(raw)
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	out := make(map[string]string, len(vals))
	for k, v := range vals {
		out[k] = v[len(v)-1]
	}
	return out, nil
}

// sessions adapts a Runtime to cri-streaming's executor and attacher.
type sessions struct{ rt Runtime }

func parseRef(podName, container string) ContainerRef {
	ns, name, _ := strings.Cut(podName, "/")
	return ContainerRef{PodRef: PodRef{Namespace: ns, Name: name}, Container: container}
}

func (s sessions) ExecInContainer(ctx context.Context, podName, _ string, container string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	return s.rt.Exec(ctx, parseRef(podName, container), cmd, streams(in, out, errw, tty, resize))
}

func (s sessions) AttachContainer(ctx context.Context, podName, _ string, container string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	return s.rt.Attach(ctx, parseRef(podName, container), streams(in, out, errw, tty, resize))
}

func streams(in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) Streams {
	return Streams{In: in, Out: out, Err: errw, TTY: tty, Resize: resize}
}

type forwarder struct {
	rt  Runtime
	pod PodRef
}

func (f forwarder) PortForward(ctx context.Context, _, _ string, port int32, stream io.ReadWriteCloser) error {
	return f.rt.PortForward(ctx, f.pod, port, stream)
}

// AddressAnnotation on a Node is the address at which the API server
// reaches its agent's API, on the port of
// status.daemonEndpoints.kubeletEndpoint.Port. Without it the server
// dials the Node's first InternalIP. Duet up's agents run in the host's
// namespace while their nodes' InternalIPs live in the nodes' namespaces,
// so they advertise 127.0.0.1.
const AddressAnnotation = "duet.dev/agent-address"

// Config configures the agent's HTTPS server.
type Config struct {
	// Addr is host:port to listen on.
	Addr string
	// CertFile and KeyFile are the agent's serving certificate, signed by
	// the cluster CA for the address the API server dials.
	CertFile, KeyFile string
	// ClientCAs verify client certificates (the cluster CA).
	ClientCAs *x509.CertPool
	Log       *slog.Logger
}

// Server is the agent's HTTPS server, listening once Listen returns.
type Server struct {
	l   net.Listener
	srv *http.Server
	log *slog.Logger
}

// Listen loads the TLS credentials and binds cfg.Addr; connections wait
// for Serve.
func Listen(cfg Config) (*Server, error) {
	tlsConfig, err := ServerTLS(cfg.CertFile, cfg.KeyFile, cfg.ClientCAs)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("streaming server: %w", err)
	}
	return &Server{l: l, log: cfg.Log, srv: &http.Server{
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(cfg.Log.Handler(), slog.LevelWarn),
	}}, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() *net.TCPAddr { return s.l.Addr().(*net.TCPAddr) }

// Serve serves rt in the background until ctx ends.
func (s *Server) Serve(ctx context.Context, rt Runtime) {
	s.srv.Handler = Authorize(Handler(rt, s.log))
	go func() {
		<-ctx.Done()
		_ = s.srv.Close()
	}()
	go func() {
		if err := s.srv.ServeTLS(s.l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("streaming server stopped", "err", err)
		}
	}()
	s.log.Info("serving exec, attach, port-forward and logs to the API server", "address", s.Addr().String())
}

// ServerTLS is the agent's TLS: its serving certificate, and client
// certificates verified against clientCAs when given (Authorize decides
// who may do what; a request without one gets 401 there, with a message,
// rather than a failed handshake).
func ServerTLS(certFile, keyFile string, clientCAs *x509.CertPool) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading the agent's serving certificate: %w", err)
	}
	if clientCAs == nil {
		return nil, errors.New("the agent needs a client CA to verify the API server")
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    clientCAs,
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"http/1.1"}, // upgrades (SPDY, WebSocket) need HTTP/1.1
	}, nil
}

// Authorize lets through only requests whose verified client certificate
// is the API server's agent client identity; /healthz is open.
func Authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return
		}
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "Unauthorized: the agent serves only the API server, which presents a client certificate of the cluster CA", http.StatusUnauthorized)
			return
		}
		leaf := r.TLS.VerifiedChains[0][0]
		if leaf.Subject.CommonName != pki.AgentClientUser {
			http.Error(w, fmt.Sprintf("Forbidden: user %q may not use the agent's API (only %q, the API server, may)", leaf.Subject.CommonName, pki.AgentClientUser), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}
