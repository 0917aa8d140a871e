// Package integration starts real `duet server` processes and drives them
// with client-go and with the machine's kubectl.
//
// TestMain builds bin/duet once into a temporary directory; StartServer runs
// it on a t.TempDir() data dir with --secure-port 0 and stops it when the
// test ends. Benchmarks (go test -bench) live in bench_test.go.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

const (
	buildTimeout = 15 * time.Minute
	startTimeout = 2 * time.Minute  // from exec to /readyz ok
	stopTimeout  = 30 * time.Second // SIGTERM to exit before SIGKILL
	kubectlLimit = 2 * time.Minute
)

var (
	// duetBin is the binary TestMain built.
	duetBin string
	// hasRepairInterval reports whether the binary accepts the hidden
	// --repair-interval flag; tests that wait for the repair loop use it to
	// wait less, and fall back to the default interval otherwise.
	hasRepairInterval bool
)

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	flag.Parse()
	// client-go logs every broken connection of the kill -9 test; the
	// tests report what matters themselves.
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	dir, err := os.MkdirTemp("", "duet-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer os.RemoveAll(dir)

	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	duetBin = filepath.Join(dir, "duet")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	start := time.Now()
	build := exec.CommandContext(ctx, "go", "build", "-o", duetBin, "./cmd/duet")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: go build ./cmd/duet in %s: %v\n", root, err)
		return 1
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "integration: built %s in %v\n", duetBin, time.Since(start).Round(time.Millisecond))
	}

	// The flag is hidden; an unknown flag fails before --data-dir is checked.
	out, _ := exec.Command(duetBin, "server", "--repair-interval=1s").CombinedOutput()
	hasRepairInterval = !strings.Contains(string(out), "unknown flag")

	return m.Run()
}

// moduleRoot is the directory of the go.mod this package belongs to.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(mod), nil
}

// ServerOptions are the flags of one `duet server`.
type ServerOptions struct {
	ServiceRanges string   // --service-cluster-ip-range (required)
	ClusterCIDR   string   // --cluster-cidr
	EtcdServers   string   // --etcd-servers; empty runs the embedded etcd
	Extra         []string // any further flags
	// RepairFast passes a short --repair-interval when the binary has it.
	RepairFast bool
}

// Server is a running (or stopped) `duet server` process on its own data
// directory. Restart and the Stop/Kill methods keep the data directory.
type Server struct {
	args       []string
	DataDir    string
	Kubeconfig string
	Config     *rest.Config // client QPS unlimited
	Client     *kubernetes.Clientset
	Dynamic    *dynamic.DynamicClient
	logPath    string
	log        *os.File
	kubeCache  string
	starts     int

	mu   sync.Mutex
	proc *process
}

type process struct {
	cmd        *exec.Cmd
	done       chan struct{} // closed when the process has exited
	err        error         // Wait's result, set before done is closed
	logDone    chan struct{} // closed when its output is all copied
	kubeconfig chan string   // the path printed on "kubeconfig: PATH"
	exitedAt   time.Time     // set before done is closed
}

// exitedOnItsOwn describes a process that exited although no Stop or Kill
// asked it to, or returns "".
func (p *process) exitedOnItsOwn() string {
	select {
	case <-p.done:
		return fmt.Sprintf("duet server (pid %d) exited at %s while the test was using it: %v (exit status 0 means a SIGTERM or SIGINT from outside this test, e.g. a pkill/killall of duet processes on this shared machine)",
			p.cmd.Process.Pid, p.exitedAt.Format("15:04:05.000"), exitStatus(p.err))
	default:
		return ""
	}
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// StartServer starts `duet server` on a fresh t.TempDir() and waits until
// it serves (kubeconfig printed and written, /readyz ok). It is stopped
// (SIGTERM, SIGKILL after stopTimeout) when the test ends, and its output
// is printed when the test failed.
func StartServer(t testing.TB, opts ServerOptions) *Server {
	t.Helper()
	s := NewServer(t, opts)
	s.Start(t)
	return s
}

// NewServer prepares a Server without starting it.
func NewServer(t testing.TB, opts ServerOptions) *Server {
	t.Helper()
	logDir := t.TempDir() // created first, so removed after the process is stopped
	s := &Server{DataDir: t.TempDir(), kubeCache: filepath.Join(logDir, "kubectl-cache")}
	s.args = []string{"server", "--data-dir", s.DataDir, "--secure-port", "0", "--service-cluster-ip-range", opts.ServiceRanges}
	if opts.ClusterCIDR != "" {
		s.args = append(s.args, "--cluster-cidr", opts.ClusterCIDR)
	}
	if opts.EtcdServers != "" {
		s.args = append(s.args, "--etcd-servers", opts.EtcdServers)
	}
	if opts.RepairFast && hasRepairInterval {
		s.args = append(s.args, "--repair-interval=2s")
	}
	s.args = append(s.args, opts.Extra...)
	s.logPath = filepath.Join(logDir, "duet-server.log")
	f, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	s.log = f
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping duet server: %v", err)
		}
		if t.Failed() {
			t.Logf("last lines of duet server output (%s):\n%s", strings.Join(s.args, " "), s.Tail(60))
		}
		f.Close()
	})
	return s
}

// Start runs the server process and waits until it is ready, failing t
// (the calling test) if it does not get there.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	if s.proc != nil {
		s.mu.Unlock()
		t.Fatal("duet server already running")
	}
	s.starts++
	fmt.Fprintf(s.log, "=== start #%d: duet %s\n", s.starts, strings.Join(s.args, " "))
	p, err := startProcess(s.args, s.log)
	if err != nil {
		s.mu.Unlock()
		t.Fatalf("starting duet server: %v", err)
	}
	s.proc = p
	s.mu.Unlock()
	s.waitReady(t, p)
}

func startProcess(args []string, log *os.File) (*process, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(duetBin, args...)
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, err
	}
	pw.Close()
	p := &process{cmd: cmd, done: make(chan struct{}), logDone: make(chan struct{}), kubeconfig: make(chan string, 1)}
	go func() {
		defer close(p.logDone)
		defer pr.Close()
		r := bufio.NewReaderSize(pr, 64<<10)
		sent := false
		for {
			line, err := r.ReadString('\n')
			if line != "" {
				log.WriteString(line)
				if rest, ok := strings.CutPrefix(line, "kubeconfig: "); ok && !sent {
					p.kubeconfig <- strings.TrimSpace(rest)
					sent = true
				}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		p.err = cmd.Wait()
		p.exitedAt = time.Now()
		close(p.done)
	}()
	return p, nil
}

func (s *Server) waitReady(t testing.TB, p *process) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	var path string
	select {
	case path = <-p.kubeconfig:
	case <-p.done:
		<-p.logDone
		t.Fatalf("duet server exited before printing its kubeconfig (%v):\n%s", p.err, s.Tail(40))
	case <-time.After(time.Until(deadline)):
		t.Fatalf("duet server printed no kubeconfig within %v:\n%s", startTimeout, s.Tail(40))
	}
	if want := filepath.Join(s.DataDir, "admin.kubeconfig"); path != want {
		t.Errorf("duet server printed kubeconfig %s, want %s", path, want)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("loading %s (printed before ready, so it must exist): %v", path, err)
	}
	cfg.QPS, cfg.Burst = -1, 1000 // no client-side rate limit
	cfg.Timeout = time.Minute
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var last string
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	err = wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case <-p.done:
			return false, fmt.Errorf("exited: %v", p.err)
		default:
		}
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = string(body)
		return strings.TrimSpace(string(body)) == "ok", nil
	})
	if err != nil {
		t.Fatalf("duet server not ready within %v (%v; last /readyz: %s):\n%s", startTimeout, err, last, s.Tail(40))
	}
	s.Kubeconfig, s.Config, s.Client, s.Dynamic = path, cfg, client, dyn
}

// PID is the running process's id.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// Stop sends SIGTERM, waits up to stopTimeout, then SIGKILLs. It returns an
// error when the process had to be killed or exited with a failure.
func (s *Server) Stop() error {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	if msg := p.exitedOnItsOwn(); msg != "" {
		<-p.logDone
		return errors.New(msg)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case <-p.done:
		err = p.err
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		err = fmt.Errorf("did not exit within %v of SIGTERM; killed", stopTimeout)
	}
	<-p.logDone
	return err
}

// Kill sends SIGKILL and waits for the process to be gone.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p == nil {
		t.Fatal("Kill: duet server not running")
	}
	if msg := p.exitedOnItsOwn(); msg != "" {
		t.Error(msg)
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	<-p.logDone
}

// Restart starts the server again on the same data directory, after Stop
// or Kill, and waits until it is ready.
func (s *Server) Restart(t testing.TB) { s.Start(t) }

// Tail returns the last n lines of the server's output, leaving out gRPC's
// connection chatter.
func (s *Server) Tail(n int) string {
	data, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", s.logPath, err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if strings.Contains(l, "addrConn.createTransport") {
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Kubectl runs the machine's kubectl against the server, with stdin as its
// input, and returns stdout, stderr and the error of the run.
func (s *Server) Kubectl(stdin string, args ...string) (string, string, error) {
	return Kubectl(s.Kubeconfig, s.kubeCache, stdin, args...)
}

// Kubectl runs `kubectl --kubeconfig kubeconfig --cache-dir cache ARGS`.
func Kubectl(kubeconfig, cache, stdin string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), kubectlLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", kubeconfig, "--cache-dir", cache}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// MustKubectl is Kubectl failing t on error.
func (s *Server) MustKubectl(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	out, errOut, err := s.Kubectl(stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// eventually polls f until it returns nil, failing the test with f's last
// error when timeout passes. It is for state that converges (controllers,
// the repair loop), never for ordering.
func eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	interval := 20 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not so after %v: %v", what, timeout, err)
		}
		time.Sleep(interval) // poll interval, not synchronisation
		if interval < 500*time.Millisecond {
			interval *= 2
		}
	}
}

// ctxT is a context for one test step.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
