// Package streaming is the agent's API for the API server: exec, attach,
// port-forward and container logs, served over HTTPS at the kubelet's
// paths so that the API server proxies pods/exec, pods/attach,
// pods/portforward and pods/log to it as kube-apiserver does to a kubelet.
// The stream protocols (SPDY and WebSocket channels, port-forward streams)
// are k8s.io/cri-streaming's; the agent's pod manager does the work behind
// the small Runtime interface.
//
// Only the API server may call it: the TLS handshake asks for a client
// certificate of the cluster CA, and a request is served only for the
// API server's agent client identity (pki.AgentClientUser); a node's or an
// administrator's certificate gets 403.
package streaming

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

// PodRef names a pod bound to this node.
type PodRef struct {
	Namespace, Name string
}

func (p PodRef) String() string { return p.Namespace + "/" + p.Name }

// ContainerRef names a container of a pod bound to this node.
type ContainerRef struct {
	PodRef
	Container string
}

// TerminalSize is a terminal's size, as a client's resize events give it.
type TerminalSize = remotecommand.TerminalSize

// Streams are a session's standard streams; a nil one was not asked for.
// Out and Err are the same writer's when TTY is set (a terminal has one
// output).
type Streams struct {
	In       io.Reader
	Out, Err io.WriteCloser
	TTY      bool
	// Resize delivers the client's terminal sizes while TTY is set.
	Resize <-chan TerminalSize
}

// LogFile is where a container instance's log is, and whether that
// instance still runs (a follower stops at the end of a stopped one).
type LogFile struct {
	Path    string
	Running func() bool
}

// Runtime is what the agent's pod manager does for the streaming server.
// Errors of type *Error carry the HTTP status the client gets; an exec
// whose command exits non-zero returns k8s.io/utils/exec.CodeExitError,
// which reaches the client as the exit code.
type Runtime interface {
	// Check reports whether the pod (and the container, unless container
	// is "") runs here, before a stream is opened.
	Check(pod PodRef, container string) error
	// Exec runs cmd in the container's namespaces until it exits.
	Exec(ctx context.Context, c ContainerRef, cmd []string, s Streams) error
	// Attach joins the running container's stdin (if it was started with
	// stdin) and output until ctx ends or the container stops.
	Attach(ctx context.Context, c ContainerRef, s Streams) error
	// PortForward connects stream to port in the pod's network namespace
	// (127.0.0.1, then ::1) and copies both ways until either side ends.
	PortForward(ctx context.Context, pod PodRef, port int32, stream io.ReadWriteCloser) error
	// LogFile is the log of the container's current instance, or of the
	// one before it.
	LogFile(c ContainerRef, previous bool) (LogFile, error)
}

// Error is a failure with the HTTP status the client gets for it.
type Error struct {
	Code    int
	Message string
}

func (e *Error) Error() string { return e.Message }

// NotFound is a pod or container that is not here.
func NotFound(format string, args ...any) error {
	return &Error{Code: http.StatusNotFound, Message: fmt.Sprintf(format, args...)}
}

// BadRequest is a request that cannot be served as asked (a container
// not running, no previous instance).
func BadRequest(format string, args ...any) error {
	return &Error{Code: http.StatusBadRequest, Message: fmt.Sprintf(format, args...)}
}

// writeError answers with err's status and message as plain text, as the
// kubelet does; the API server turns it into a Status.
func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var e *Error
	if errors.As(err, &e) {
		code = e.Code
	}
	// No trailing newline: the API server passes the body on as the
	// Status's message.
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, err.Error())
}
