package core

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/proxy"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	genericrest "k8s.io/apiserver/pkg/registry/generic/rest"
	"k8s.io/apiserver/pkg/registry/rest"
	translator "k8s.io/apiserver/pkg/util/proxy"
	"k8s.io/streaming/pkg/httpstream/wsstream"

	"github.com/duet-net/duet/internal/agent/streaming"
)

// AgentConnection is how the API server reaches node agents: over HTTPS,
// verifying the agent's serving certificate against the cluster CA and
// presenting the API server's agent client certificate.
type AgentConnection struct {
	Transport *http.Transport
}

// AddPodStreams adds pods/exec, pods/attach, pods/portforward and pods/log
// to the core/v1 storage: each finds the pod's node and proxies the
// request to that node's agent, as kube-apiserver proxies them to the
// kubelet. WebSocket clients (kubectl's default since 1.30 for exec and
// attach, 1.31 for port-forward) are translated to SPDY towards the agent.
func AddPodStreams(storage map[string]rest.Storage, conn AgentConnection) error {
	pods, ok := storage["pods"].(rest.Getter)
	if !ok {
		return fmt.Errorf("pod storage missing")
	}
	nodes, ok := storage["nodes"].(rest.Getter)
	if !ok {
		return fmt.Errorf("node storage missing")
	}
	l := &locator{pods: pods, nodes: nodes, transport: conn.Transport}
	storage["pods/exec"] = &execREST{l}
	storage["pods/attach"] = &attachREST{l}
	storage["pods/portforward"] = &portForwardREST{l}
	storage["pods/log"] = &logREST{l}
	return nil
}

// locator finds where a pod's agent serves it.
type locator struct {
	pods, nodes rest.Getter
	transport   *http.Transport
}

func (l *locator) pod(ctx context.Context, name string) (*corev1.Pod, error) {
	obj, err := l.pods.Get(ctx, name, &metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, fmt.Errorf("unexpected object %T for pod %s", obj, name)
	}
	return pod, nil
}

// container resolves the container a request names: the only one when it
// names none, and an error listing them when the pod has several.
func container(pod *corev1.Pod, name string) (string, error) {
	if name == "" {
		switch len(pod.Spec.Containers) {
		case 1:
			return pod.Spec.Containers[0].Name, nil
		case 0:
			return "", apierrors.NewBadRequest(fmt.Sprintf("pod %s has no containers", pod.Name))
		}
		var names []string
		for _, c := range pod.Spec.Containers {
			names = append(names, c.Name)
		}
		return "", apierrors.NewBadRequest(fmt.Sprintf("a container name must be specified for pod %s, choose one of: [%s]", pod.Name, strings.Join(names, " ")))
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return name, nil
		}
	}
	return "", apierrors.NewBadRequest(fmt.Sprintf("container %s is not valid for pod %s", name, pod.Name))
}

// agentURL is the base URL of the agent of the pod's node.
func (l *locator) agentURL(ctx context.Context, pod *corev1.Pod) (*url.URL, error) {
	if pod.Spec.NodeName == "" {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("pod %s does not have a host assigned", pod.Name))
	}
	obj, err := l.nodes.Get(genericapirequest.WithNamespace(ctx, ""), pod.Spec.NodeName, &metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("pod %s is bound to node %s, which does not exist", pod.Name, pod.Spec.NodeName))
		}
		return nil, err
	}
	node := obj.(*corev1.Node)
	port := node.Status.DaemonEndpoints.KubeletEndpoint.Port
	if port <= 0 {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("node %s serves no exec, attach, port-forward or logs: its agent runs without --tls-cert-file", node.Name))
	}
	host := node.Annotations[streaming.AddressAnnotation]
	if host == "" {
		for _, a := range node.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				host = a.Address
				break
			}
		}
	}
	if host == "" {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("node %s has no address for its agent (no %s annotation and no InternalIP)", node.Name, streaming.AddressAnnotation))
	}
	return &url.URL{Scheme: "https", Host: net.JoinHostPort(host, strconv.Itoa(int(port)))}, nil
}

// streamLocation checks that the pod can take a session in the container
// and returns the agent URL for it; action says what the client asked for
// in errors, and agentPath is the agent's path for it.
func (l *locator) streamLocation(ctx context.Context, name, containerName, action, agentPath string) (*url.URL, error) {
	pod, err := l.pod(ctx, name)
	if err != nil {
		return nil, err
	}
	c, err := container(pod, containerName)
	if err != nil {
		return nil, err
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("cannot %s a container in a completed pod; current phase is %s", action, pod.Status.Phase))
	}
	u, err := l.agentURL(ctx, pod)
	if err != nil {
		return nil, err
	}
	u.Path = path.Join("/", agentPath, pod.Namespace, pod.Name, c)
	return u, nil
}

func streamQuery(stdin, stdout, stderr, tty bool) url.Values {
	q := url.Values{}
	for _, s := range []struct {
		name string
		on   bool
	}{{"input", stdin}, {"output", stdout}, {"error", stderr}, {"tty", tty}} {
		if s.on {
			q.Set(s.name, "1")
		}
	}
	return q
}

func (l *locator) upgradeHandler(location *url.URL, responder rest.Responder) *proxy.UpgradeAwareHandler {
	return proxy.NewUpgradeAwareHandler(location, l.transport, false, true, proxy.NewErrorResponder(responder))
}

// streamHandler proxies SPDY as it is and translates WebSocket (v5
// channel protocol) clients to SPDY towards the agent.
func (l *locator) streamHandler(location *url.URL, responder rest.Responder, opts translator.Options) http.Handler {
	return translator.NewTranslatingHandler(l.upgradeHandler(location, responder),
		translator.NewStreamTranslatorHandler(location, l.transport, 0, opts),
		wsstream.IsWebSocketRequestWithStreamCloseProtocol)
}

var upgradeMethods = []string{"GET", "POST"}

type execREST struct{ l *locator }

var _ rest.Connecter = &execREST{}

func (r *execREST) New() runtime.Object { return &corev1.PodExecOptions{} }
func (r *execREST) Destroy()            {}
func (r *execREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &corev1.PodExecOptions{}, false, ""
}
func (r *execREST) ConnectMethods() []string { return upgradeMethods }

func (r *execREST) Connect(ctx context.Context, name string, obj runtime.Object, responder rest.Responder) (http.Handler, error) {
	opts, ok := obj.(*corev1.PodExecOptions)
	if !ok {
		return nil, fmt.Errorf("invalid options object: %T", obj)
	}
	if errs := validateStreamOptions(opts.Stdin, opts.Stdout, opts.Stderr, opts.TTY); len(errs) > 0 {
		return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("PodExecOptions").GroupKind(), name, errs)
	}
	if len(opts.Command) == 0 {
		return nil, apierrors.NewBadRequest("you must specify at least 1 command")
	}
	location, err := r.l.streamLocation(ctx, name, opts.Container, "exec into", "exec")
	if err != nil {
		return nil, err
	}
	q := streamQuery(opts.Stdin, opts.Stdout, opts.Stderr, opts.TTY)
	q["command"] = opts.Command
	location.RawQuery = q.Encode()
	return r.l.streamHandler(location, responder, translator.Options{Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr, Tty: opts.TTY}), nil
}

type attachREST struct{ l *locator }

var _ rest.Connecter = &attachREST{}

func (r *attachREST) New() runtime.Object { return &corev1.PodAttachOptions{} }
func (r *attachREST) Destroy()            {}
func (r *attachREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &corev1.PodAttachOptions{}, false, ""
}
func (r *attachREST) ConnectMethods() []string { return upgradeMethods }

func (r *attachREST) Connect(ctx context.Context, name string, obj runtime.Object, responder rest.Responder) (http.Handler, error) {
	opts, ok := obj.(*corev1.PodAttachOptions)
	if !ok {
		return nil, fmt.Errorf("invalid options object: %T", obj)
	}
	if errs := validateStreamOptions(opts.Stdin, opts.Stdout, opts.Stderr, opts.TTY); len(errs) > 0 {
		return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("PodAttachOptions").GroupKind(), name, errs)
	}
	location, err := r.l.streamLocation(ctx, name, opts.Container, "attach to", "attach")
	if err != nil {
		return nil, err
	}
	location.RawQuery = streamQuery(opts.Stdin, opts.Stdout, opts.Stderr, opts.TTY).Encode()
	return r.l.streamHandler(location, responder, translator.Options{Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr, Tty: opts.TTY}), nil
}

func validateStreamOptions(stdin, stdout, stderr, tty bool) field.ErrorList {
	var errs field.ErrorList
	if !stdin && !stdout && !stderr {
		errs = append(errs, field.Required(field.NewPath("stdout"), "at least one of stdin, stdout or stderr must be true"))
	}
	if tty && stderr {
		errs = append(errs, field.Invalid(field.NewPath("stderr"), stderr, "a terminal has no separate stderr: with tty set, stderr must be false"))
	}
	return errs
}

type portForwardREST struct{ l *locator }

var _ rest.Connecter = &portForwardREST{}

func (r *portForwardREST) New() runtime.Object { return &corev1.PodPortForwardOptions{} }
func (r *portForwardREST) Destroy()            {}
func (r *portForwardREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &corev1.PodPortForwardOptions{}, false, ""
}
func (r *portForwardREST) ConnectMethods() []string { return upgradeMethods }

func (r *portForwardREST) Connect(ctx context.Context, name string, obj runtime.Object, responder rest.Responder) (http.Handler, error) {
	opts, ok := obj.(*corev1.PodPortForwardOptions)
	if !ok {
		return nil, fmt.Errorf("invalid options object: %T", obj)
	}
	var errs field.ErrorList
	for i, p := range opts.Ports {
		if p < 1 || p > 65535 {
			errs = append(errs, field.Invalid(field.NewPath("ports").Index(i), p, "must be a TCP port, 1-65535"))
		}
	}
	if len(errs) > 0 {
		return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("PodPortForwardOptions").GroupKind(), name, errs)
	}
	pod, err := r.l.pod(ctx, name)
	if err != nil {
		return nil, err
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("cannot forward ports to a completed pod; current phase is %s", pod.Status.Phase))
	}
	location, err := r.l.agentURL(ctx, pod)
	if err != nil {
		return nil, err
	}
	location.Path = path.Join("/portforward", pod.Namespace, pod.Name)
	q := url.Values{}
	for _, p := range opts.Ports {
		q.Add("port", strconv.Itoa(int(p)))
	}
	location.RawQuery = q.Encode()
	handler := r.l.upgradeHandler(location, responder)
	// kubectl tunnels SPDY through a WebSocket; the agent speaks SPDY.
	return translator.NewTranslatingHandler(handler, translator.NewTunnelingHandler(handler), wsstream.IsWebSocketRequestWithTunnelingProtocol), nil
}

type logREST struct{ l *locator }

var _ rest.GetterWithOptions = &logREST{}

func (r *logREST) New() runtime.Object { return &corev1.Pod{} }
func (r *logREST) Destroy()            {}
func (r *logREST) NewGetOptions() (runtime.Object, bool, string) {
	return &corev1.PodLogOptions{}, false, ""
}

// ProducesMIMETypes and ProducesObject tell the API documents that logs
// are plain text.
func (r *logREST) ProducesMIMETypes(string) []string { return []string{"text/plain"} }
func (r *logREST) ProducesObject(string) any         { return "" }

func (r *logREST) Get(ctx context.Context, name string, obj runtime.Object) (runtime.Object, error) {
	opts, ok := obj.(*corev1.PodLogOptions)
	if !ok {
		return nil, fmt.Errorf("invalid options object: %T", obj)
	}
	if errs := validateLogOptions(opts); len(errs) > 0 {
		return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("PodLogOptions").GroupKind(), name, errs)
	}
	pod, err := r.l.pod(ctx, name)
	if err != nil {
		return nil, err
	}
	c, err := container(pod, opts.Container)
	if err != nil {
		return nil, err
	}
	location, err := r.l.agentURL(ctx, pod)
	if err != nil {
		return nil, err
	}
	location.Path = path.Join("/containerLogs", pod.Namespace, pod.Name, c)
	q := url.Values{}
	for k, on := range map[string]bool{"follow": opts.Follow, "previous": opts.Previous, "timestamps": opts.Timestamps} {
		if on {
			q.Set(k, "true")
		}
	}
	for k, v := range map[string]*int64{"tailLines": opts.TailLines, "limitBytes": opts.LimitBytes, "sinceSeconds": opts.SinceSeconds} {
		if v != nil {
			q.Set(k, strconv.FormatInt(*v, 10))
		}
	}
	if opts.SinceTime != nil {
		q.Set("sinceTime", opts.SinceTime.UTC().Format("2006-01-02T15:04:05Z07:00"))
	}
	location.RawQuery = q.Encode()
	return &genericrest.LocationStreamer{
		Location:        location,
		Transport:       r.l.transport,
		ContentType:     "text/plain",
		Flush:           opts.Follow,
		ResponseChecker: genericrest.NewGenericHttpResponseChecker(corev1.Resource("pods/log"), name),
		RedirectChecker: genericrest.PreventRedirects,
	}, nil
}

// validateLogOptions applies Kubernetes' rules for PodLogOptions.
func validateLogOptions(o *corev1.PodLogOptions) field.ErrorList {
	var errs field.ErrorList
	if o.TailLines != nil && *o.TailLines < 0 {
		errs = append(errs, field.Invalid(field.NewPath("tailLines"), *o.TailLines, "must be greater than or equal to 0"))
	}
	if o.LimitBytes != nil && *o.LimitBytes < 1 {
		errs = append(errs, field.Invalid(field.NewPath("limitBytes"), *o.LimitBytes, "must be greater than 0"))
	}
	if o.SinceSeconds != nil {
		if *o.SinceSeconds < 1 {
			errs = append(errs, field.Invalid(field.NewPath("sinceSeconds"), *o.SinceSeconds, "must be greater than 0"))
		}
		if o.SinceTime != nil {
			errs = append(errs, field.Forbidden(field.NewPath("sinceTime"), "at most one of sinceTime or sinceSeconds may be specified"))
		}
	}
	if o.Stream != nil && *o.Stream != corev1.LogStreamAll {
		errs = append(errs, field.NotSupported(field.NewPath("stream"), *o.Stream, []string{corev1.LogStreamAll}))
	}
	return errs
}
