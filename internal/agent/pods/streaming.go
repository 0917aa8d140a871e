package pods

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/creack/pty"
	corev1 "k8s.io/api/core/v1"
	utilexec "k8s.io/utils/exec"

	"github.com/duet-net/duet/internal/agent/streaming"
	"github.com/duet-net/duet/internal/deathsig"
	"github.com/duet-net/duet/internal/netns"
)

// The Manager is the runtime behind the agent's streaming server.
var _ streaming.Runtime = (*Manager)(nil)

// commandIn is argv run inside a container's namespaces (the pod's
// network namespace and the container's world), as the container runs:
// util-linux's nsenter where the node has it (it enters and execs in
// about a millisecond), duet's own ns-exec otherwise (network only).
func (m *Manager) commandIn(run *podRun, container, dir string, argv []string) *exec.Cmd {
	if argv[0] == "duet" {
		argv = append([]string{m.Binary}, argv[1:]...) // pods may run duet itself wherever it is installed
	}
	if nsenter != "" {
		var args []string
		if run.sandbox.NetNS != "" {
			args = append(args, "--net="+run.sandbox.NetNS)
		}
		args = append(args, run.world.EnterArgs(container)...)
		if dir != "" {
			args = append(args, "--wd="+dir)
		}
		return exec.Command(nsenter, append(append(args, "--"), argv...)...)
	}
	return exec.Command(m.Binary, append([]string{"ns-exec", run.sandbox.NetNS, "--"}, argv...)...)
}

// findPod returns the run of the pod called ref, preferring one that is
// not being stopped (a pod replaced by one of the same name).
func (m *Manager) findPod(ref streaming.PodRef) (*podRun, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var found *podRun
	for _, run := range m.running {
		if run.pod.Namespace == ref.Namespace && run.pod.Name == ref.Name && (found == nil || found.terminating) {
			found = run
		}
	}
	if found == nil {
		return nil, streaming.NotFound("pod %s is not running on node %s", ref, m.NodeName)
	}
	return found, nil
}

func (m *Manager) findContainer(ref streaming.ContainerRef) (*podRun, *corev1.Container, *containerRun, error) {
	run, err := m.findPod(ref.PodRef)
	if err != nil {
		return nil, nil, nil, err
	}
	for i, c := range run.pod.Spec.Containers {
		if c.Name == ref.Container {
			return run, &run.pod.Spec.Containers[i], run.containers[c.Name], nil
		}
	}
	return nil, nil, nil, streaming.NotFound("container %q not found in pod %s", ref.Container, ref.PodRef)
}

// running returns the container's streams if it runs now.
func (cr *containerRun) running() (*containerIO, bool) {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	return cr.io, cr.state.Running != nil && cr.io != nil
}

// Check implements streaming.Runtime: the pod must run here, and the
// container (when named) must be running.
func (m *Manager) Check(ref streaming.PodRef, container string) error {
	if container == "" {
		_, err := m.findPod(ref)
		return err
	}
	_, _, cr, err := m.findContainer(streaming.ContainerRef{PodRef: ref, Container: container})
	if err != nil {
		return err
	}
	if _, ok := cr.running(); !ok {
		return streaming.BadRequest("container %q in pod %s is not running", container, ref)
	}
	return nil
}

// Exec implements streaming.Runtime: cmd runs in the pod's namespaces with
// the container's environment and working directory, on a terminal of its
// own when s.TTY is set.
func (m *Manager) Exec(ctx context.Context, ref streaming.ContainerRef, argv []string, s streaming.Streams) error {
	run, c, cr, err := m.findContainer(ref)
	if err != nil {
		return err
	}
	if _, ok := cr.running(); !ok {
		return streaming.BadRequest("container %q in pod %s is not running", ref.Container, ref.PodRef)
	}
	cmd := m.commandIn(run, ref.Container, c.WorkingDir, argv)
	cr.mu.Lock()
	cmd.Env = cr.env
	cr.mu.Unlock()
	// The session's processes die with the agent, and all of them with
	// the session when its client goes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if s.TTY {
		err = m.execTTY(ctx, cmd, s)
	} else {
		err = execPlain(ctx, cmd, s)
	}
	if code, ok := exitCode(err); ok {
		if code == 0 {
			return nil
		}
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	return err
}

// stopGroup kills a session's whole process group when its context ends.
func stopGroup(ctx context.Context, cmd *exec.Cmd) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	return func() { close(done) }
}

func execPlain(ctx context.Context, cmd *exec.Cmd, s streaming.Streams) error {
	if s.Out != nil {
		cmd.Stdout = s.Out
	}
	if s.Err != nil {
		cmd.Stderr = s.Err
	}
	var stdin io.WriteCloser
	if s.In != nil {
		var err error
		if stdin, err = cmd.StdinPipe(); err != nil {
			return err
		}
	}
	if err := deathsig.Start(cmd); err != nil {
		return fmt.Errorf("starting %q: %w", cmd.Args, err)
	}
	defer stopGroup(ctx, cmd)()
	if stdin != nil {
		// Not waited for: a client may keep its stdin open after the
		// command is done with it.
		go func() {
			_, _ = io.Copy(stdin, s.In)
			stdin.Close()
		}()
	}
	return cmd.Wait()
}

func (m *Manager) execTTY(ctx context.Context, cmd *exec.Cmd, s streaming.Streams) error {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return fmt.Errorf("opening a terminal: %w", err)
	}
	defer ptmx.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Setsid, cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = false, true, true, 0
	err = deathsig.Start(cmd)
	tty.Close()
	if err != nil {
		return fmt.Errorf("starting %q: %w", cmd.Args, err)
	}
	defer stopGroup(ctx, cmd)()
	if s.Resize != nil {
		go func() {
			for size := range s.Resize {
				_ = pty.Setsize(ptmx, &pty.Winsize{Rows: size.Height, Cols: size.Width})
			}
		}()
	}
	if s.In != nil {
		go func() { _, _ = io.Copy(ptmx, s.In) }()
	}
	out := make(chan struct{})
	go func() {
		defer close(out)
		if s.Out != nil {
			_, _ = io.Copy(s.Out, ptmx) // ends with EIO once no process holds the terminal
		}
	}()
	err = cmd.Wait()
	if s.Out != nil {
		select {
		case <-out:
		case <-time.After(2 * time.Second):
			// A child left running holds the terminal; its output is not
			// the session's.
		}
	}
	return err
}

// Attach implements streaming.Runtime.
func (m *Manager) Attach(ctx context.Context, ref streaming.ContainerRef, s streaming.Streams) error {
	_, _, cr, err := m.findContainer(ref)
	if err != nil {
		return err
	}
	cio, ok := cr.running()
	if !ok {
		return streaming.BadRequest("container %q in pod %s is not running", ref.Container, ref.PodRef)
	}
	var out, errw io.Writer
	if s.Out != nil {
		out = s.Out
	}
	if s.Err != nil {
		errw = s.Err
	}
	return cio.attach(ctx.Done(), s.In, out, errw, s.Resize)
}

// PortForward implements streaming.Runtime: it connects to the port on
// the pod's loopback, IPv4 first and then IPv6, so that servers listening
// on either family's loopback or wildcard address are reached.
func (m *Manager) PortForward(ctx context.Context, ref streaming.PodRef, port int32, stream io.ReadWriteCloser) error {
	run, err := m.findPod(ref)
	if err != nil {
		return err
	}
	if port <= 0 || port > 65535 {
		return fmt.Errorf("port %d: not a TCP port", port)
	}
	var conn net.Conn
	err = netns.Do(run.sandbox.NetNS, func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		var errs []error
		for _, host := range []string{"127.0.0.1", "::1"} {
			c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(int(port))))
			if err == nil {
				conn = c
				return nil
			}
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return fmt.Errorf("nothing accepts connections on port %d in pod %s (tried 127.0.0.1 and ::1): %w", port, ref, err)
	}
	defer conn.Close()
	go func() {
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite() // the client is done sending
		}
	}()
	// The pod's side closing ends the forwarded connection.
	_, err = io.Copy(stream, conn)
	return err
}

// LogFile implements streaming.Runtime.
func (m *Manager) LogFile(ref streaming.ContainerRef, previous bool) (streaming.LogFile, error) {
	run, _, cr, err := m.findContainer(ref)
	if err != nil {
		return streaming.LogFile{}, err
	}
	cr.mu.Lock()
	instance, state := cr.restarts, cr.state
	cr.mu.Unlock()
	dir := m.containerLogDir(run.pod, ref.Container)
	if previous {
		if instance == 0 {
			return streaming.LogFile{}, streaming.BadRequest("previous terminated container %q in pod %s not found", ref.Container, ref.PodRef)
		}
		path := instanceLog(dir, instance-1)
		if _, err := os.Stat(path); err != nil {
			return streaming.LogFile{}, streaming.BadRequest("previous terminated container %q in pod %s not found", ref.Container, ref.PodRef)
		}
		return streaming.LogFile{Path: path, Running: func() bool { return false }}, nil
	}
	path := instanceLog(dir, instance)
	if _, err := os.Stat(path); err != nil {
		reason := "ContainerCreating"
		if state.Waiting != nil {
			reason = state.Waiting.Reason
			if state.Waiting.Message != "" {
				reason += ": " + state.Waiting.Message
			}
		}
		return streaming.LogFile{}, streaming.BadRequest("container %q in pod %s is waiting to start: %s", ref.Container, ref.PodRef, reason)
	}
	return streaming.LogFile{Path: path, Running: func() bool {
		cr.mu.Lock()
		defer cr.mu.Unlock()
		return cr.restarts == instance && cr.state.Running != nil
	}}, nil
}
