package pods

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/duet-net/duet/internal/agent/crilog"
	"github.com/duet-net/duet/internal/agent/streaming"
)

// containerIO is one container instance's standard streams: its output
// goes to the instance's CRI log and to attached clients; its stdin, when
// the container asks for one (stdin: true), comes from attached clients.
// A container with tty: true runs on a terminal whose output is its
// stdout.
type containerIO struct {
	instance int32
	log      *crilog.File
	tty      *os.File // the terminal's controlling side, for tty containers
	// stdin feeds the container; nil without stdin: true.
	stdin     io.WriteCloser
	stdinOnce bool
	// readers are the agent's ends of the output pipes (or the terminal).
	readers []*os.File
	// childEnds are the container's ends, closed once it started.
	childEnds []*os.File

	mu       sync.Mutex
	attached map[*attachment]bool
	pumps    sync.WaitGroup
	// done is closed when the instance's output has ended.
	done chan struct{}
}

// attachment is a client attached to a container's output.
type attachment struct {
	out, err io.Writer
	// gone is closed when a write to the client failed.
	gone     chan struct{}
	goneOnce sync.Once
}

// containerLogDir is where the logs of a pod's container live:
// one file per instance, N.log for the Nth start, as the kubelet keeps
// them under /var/log/pods.
func (m *Manager) containerLogDir(pod *corev1.Pod, container string) string {
	return filepath.Join(m.StateDir, "pods", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID), container)
}

func instanceLog(dir string, instance int32) string {
	return filepath.Join(dir, strconv.Itoa(int(instance))+".log")
}

// openContainerIO prepares the streams of the container's next instance
// (numbered by its restart count) and keeps the log of the instance
// before it, for `kubectl logs --previous`; older ones go.
func (m *Manager) openContainerIO(c corev1.Container, cr *containerRun, dir string) (*containerIO, error) {
	cr.mu.Lock()
	instance := cr.restarts
	cr.mu.Unlock()
	if instance == 0 {
		// A new run of the pod (or of the agent): nothing before it is
		// this run's.
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("clearing old container logs: %w", err)
		}
	} else if instance >= 2 {
		if err := crilog.RemoveAll(instanceLog(dir, instance-2)); err != nil {
			m.Log.Warn("removing an old container log", "dir", dir, "err", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the container log directory: %w", err)
	}
	log, err := crilog.Create(instanceLog(dir, instance), m.LogOptions)
	if err != nil {
		return nil, err
	}
	cio := &containerIO{instance: instance, log: log, stdinOnce: c.StdinOnce, attached: map[*attachment]bool{}, done: make(chan struct{})}
	if c.TTY {
		ptmx, tty, err := pty.Open()
		if err != nil {
			log.Close()
			return nil, fmt.Errorf("opening a terminal for the container: %w", err)
		}
		cio.tty, cio.readers, cio.childEnds = ptmx, []*os.File{ptmx}, []*os.File{tty}
		if c.Stdin {
			cio.stdin = ptmx
		}
		return cio, nil
	}
	for range 2 {
		r, w, err := os.Pipe()
		if err != nil {
			cio.closeFiles()
			return nil, fmt.Errorf("container output pipe: %w", err)
		}
		cio.readers, cio.childEnds = append(cio.readers, r), append(cio.childEnds, w)
	}
	if c.Stdin {
		r, w, err := os.Pipe()
		if err != nil {
			cio.closeFiles()
			return nil, fmt.Errorf("container stdin pipe: %w", err)
		}
		cio.stdin, cio.childEnds = w, append(cio.childEnds, r)
	}
	return cio, nil
}

// start starts the instance's process on its streams through runner and
// begins copying its output.
func (cio *containerIO) start(runner Runner, spec ProcessSpec) (Process, error) {
	if cio.tty != nil {
		t := cio.childEnds[0]
		spec.Stdin, spec.Stdout, spec.Stderr, spec.TTY = t, t, t, true
	} else {
		spec.Stdout, spec.Stderr = cio.childEnds[0], cio.childEnds[1]
		if cio.stdin != nil {
			spec.Stdin = cio.childEnds[2]
		}
	}
	proc, err := runner.Start(spec)
	for _, f := range cio.childEnds {
		f.Close()
	}
	cio.childEnds = nil
	if err != nil {
		return nil, err
	}
	streams := []crilog.Stream{crilog.Stdout, crilog.Stderr}
	for i, r := range cio.readers {
		cio.pumps.Add(1)
		go cio.pump(r, streams[i])
	}
	return proc, nil
}

// pump copies one output stream to the log and to attached clients until
// every holder of the container's end has closed it.
func (cio *containerIO) pump(r *os.File, s crilog.Stream) {
	defer cio.pumps.Done()
	w := cio.log.Stream(s)
	defer w.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			_, _ = w.Write(buf[:n]) // a failing log must not stop the container
			cio.mu.Lock()
			for a := range cio.attached {
				to := a.out
				if s == crilog.Stderr {
					to = a.err
				}
				if to == nil {
					continue
				}
				if _, err := to.Write(buf[:n]); err != nil {
					delete(cio.attached, a)
					a.goneOnce.Do(func() { close(a.gone) })
				}
			}
			cio.mu.Unlock()
		}
		if err != nil {
			// io.EOF for a pipe; EIO for a terminal whose other side is
			// closed; ErrClosed once finish gave up waiting.
			return
		}
	}
}

// finish waits for the output of an instance that exited (briefly: a
// child it left behind may hold its output open), then closes its log.
func (cio *containerIO) finish() {
	drained := make(chan struct{})
	go func() {
		cio.pumps.Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(2 * time.Second):
		for _, r := range cio.readers {
			_ = r.SetReadDeadline(time.Now()) // wakes a blocked read
		}
		<-drained
	}
	cio.closeFiles()
	close(cio.done)
}

func (cio *containerIO) closeFiles() {
	for _, f := range append(cio.readers, cio.childEnds...) {
		f.Close()
	}
	if cio.stdin != nil && cio.tty == nil {
		cio.stdin.Close()
	}
	cio.log.Close()
}

// attach joins a client to the instance's output (and stdin) until ctx
// ends, the instance's output ends or the client goes away.
func (cio *containerIO) attach(done <-chan struct{}, in io.Reader, out, errw io.Writer, resize <-chan streaming.TerminalSize) error {
	if in != nil && cio.stdin == nil {
		return errors.New("the container was not started with stdin: true, so there is no stdin to attach to")
	}
	if cio.tty != nil {
		errw = out // a terminal has one output
	}
	a := &attachment{out: out, err: errw, gone: make(chan struct{})}
	cio.mu.Lock()
	cio.attached[a] = true
	cio.mu.Unlock()
	defer func() {
		cio.mu.Lock()
		delete(cio.attached, a)
		cio.mu.Unlock()
	}()
	stdinDone := make(chan struct{})
	if in != nil {
		go func() {
			defer close(stdinDone)
			_, _ = io.Copy(cio.stdin, in)
			if cio.stdinOnce && cio.tty == nil {
				cio.stdin.Close()
			}
		}()
	}
	if resize != nil && cio.tty != nil {
		go func() {
			for size := range resize {
				_ = pty.Setsize(cio.tty, &pty.Winsize{Rows: size.Height, Cols: size.Width})
			}
		}()
	}
	select {
	case <-done:
	case <-cio.done:
	case <-a.gone:
	case <-stdinDone:
		if !cio.stdinOnce {
			// The client closed its stdin; stay for the output unless
			// the container takes stdin once only.
			select {
			case <-done:
			case <-cio.done:
			case <-a.gone:
			}
		}
	}
	return nil
}

// removeLogs removes the logs of a pod that stopped for good.
func (m *Manager) removeLogs(uid types.UID) {
	dirs, _ := filepath.Glob(filepath.Join(m.StateDir, "pods", "*_"+string(uid)))
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			m.Log.Warn("removing a stopped pod's logs", "dir", d, "err", err)
		}
	}
}

// exitCode is what a shell reports for a process that ended: its exit
// status, or 128 plus the signal that killed it.
func exitCode(err error) (int, bool) {
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		return 0, false
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), true
	}
	return exit.ExitCode(), true
}
