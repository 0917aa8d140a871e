package pods

import (
	"errors"
	"fmt"
	"os/exec"
	"syscall"

	"github.com/duet-net/duet/internal/deathsig"
)

// nsenter is util-linux's nsenter, when the node has it.
var nsenter, _ = exec.LookPath("nsenter")

// NSEnterRunner runs container processes on the node as children of the
// agent: util-linux's nsenter enters the pod's namespaces and execs the
// command; without nsenter, `duet ns-exec` enters the network namespace
// (it cannot enter others).
type NSEnterRunner struct {
	// Binary is the duet executable, for ns-exec.
	Binary string
}

// Start starts spec's process in its own process group, killed with the
// agent: a restarted agent starts the containers again.
func (r NSEnterRunner) Start(spec ProcessSpec) (Process, error) {
	if len(spec.Argv) == 0 {
		return nil, errors.New("no command")
	}
	cmd, err := r.command(spec)
	if err != nil {
		return nil, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = spec.Stdin, spec.Stdout, spec.Stderr
	if cmd.Path != nsenter || nsenter == "" {
		cmd.Dir = spec.Dir // nsenter changes directory itself (--wd), inside the pod's root
	}
	cmd.Env = spec.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if spec.TTY {
		cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Setsid, cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = false, true, true, 0
	}
	if err := deathsig.Start(cmd); err != nil {
		return nil, err
	}
	return &hostProcess{cmd: cmd}, nil
}

func (r NSEnterRunner) command(spec ProcessSpec) (*exec.Cmd, error) {
	argv := spec.Argv
	if spec.NetNS == "" && len(spec.NSArgs) == 0 {
		return exec.Command(argv[0], argv[1:]...), nil
	}
	if nsenter != "" {
		// util-linux's nsenter enters the namespace and execs in about a
		// millisecond; duet's own ns-exec pays ~100 ms of Go and
		// client-go start-up per container, which dominates a burst.
		args := make([]string, 0, 2+len(spec.NSArgs)+len(argv))
		if spec.NetNS != "" {
			args = append(args, "--net="+spec.NetNS)
		}
		args = append(args, spec.NSArgs...)
		switch {
		case spec.Dir != "" && len(spec.NSArgs) > 0:
			// nsenter's --wd opens the directory before it enters the mount
			// namespace, on the host: change to it inside the pod's root.
			argv = append([]string{"/bin/sh", "-c", `cd "$0" && exec "$@"`, spec.Dir}, argv...)
		case spec.Dir != "":
			args = append(args, "--wd="+spec.Dir)
		}
		args = append(args, "--")
		return exec.Command(nsenter, append(args, argv...)...), nil
	}
	if len(spec.NSArgs) > 0 {
		return nil, fmt.Errorf("entering the pod's namespaces (%v) needs util-linux's nsenter, which is not on PATH", spec.NSArgs)
	}
	return exec.Command(r.Binary, append([]string{"ns-exec", spec.NetNS, "--"}, argv...)...), nil
}

type hostProcess struct{ cmd *exec.Cmd }

func (p *hostProcess) Pid() int { return p.cmd.Process.Pid }

// Wait reports a process killed by a signal as exiting with 128+signal,
// as container runtimes do (137 for SIGKILL, 143 for SIGTERM).
func (p *hostProcess) Wait() (int, error) {
	err := p.cmd.Wait()
	if code, ok := exitCode(err); ok {
		return code, nil
	}
	return 0, err
}

func (p *hostProcess) Signal(sig syscall.Signal) error {
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}
