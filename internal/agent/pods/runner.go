package pods

import (
	"io"
	"syscall"

	corev1 "k8s.io/api/core/v1"
)

// Runner starts container processes in a pod's namespaces. The real one
// is NSEnterRunner; tests use a fake that needs no root.
type Runner interface {
	Start(spec ProcessSpec) (Process, error)
}

// ProcessSpec is one process of a container (its command, or an exec
// probe's) and the namespaces it runs in.
type ProcessSpec struct {
	// Argv is the command and its arguments; Argv[0] is looked up in the
	// node's PATH.
	Argv []string
	// Env is the whole environment, NAME=value.
	Env []string
	// Dir is the working directory; "" is the agent's.
	Dir string
	// NetNS is the network namespace to run in: the pod's, or the node's
	// for hostNetwork pods; "" is the agent's own.
	NetNS string
	// NSArgs are further nsenter arguments that enter other namespaces of
	// the pod (--uts=PATH, --mount=PATH, ...), after NetNS is entered.
	NSArgs []string
	// Stdin is the process's standard input; nil reads /dev/null.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// TTY: Stdin is a terminal that becomes the process's controlling
	// one, in a session of its own (whose process group is its PID).
	TTY bool
}

// Process is a started container process.
type Process interface {
	// Pid identifies the process (container IDs are duet://PID).
	Pid() int
	// Wait waits for the process to exit and returns its exit code; err
	// is set only when the exit status could not be had.
	Wait() (code int, err error)
	// Signal sends sig to the process's group, which is the container:
	// children it started go with it.
	Signal(sig syscall.Signal) error
}

// processSpec is a process of container c: its own or an exec probe's,
// the one place that says which namespaces and directory they run in.
func (run *podRun) processSpec(c corev1.Container, argv, env []string) ProcessSpec {
	return ProcessSpec{Argv: argv, Env: env, Dir: c.WorkingDir, NetNS: run.sandbox.NetNS, NSArgs: run.world.EnterArgs(c.Name)}
}
