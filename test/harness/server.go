// Package harness starts Duet's programs for the integration and e2e tests:
// it builds the duet binary once per test process (Main), runs `duet server`
// on a test's own data directory (Server) and `duet up` clusters (Up), and
// runs the machine's kubectl against them. It is a package of its own, not a
// _test.go file, so that every test package drives Duet the same way.
package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
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
)

const (
	buildTimeout = 15 * time.Minute
	// StartTimeout bounds a server's start, from exec to /readyz ok.
	StartTimeout = 2 * time.Minute
	// StopTimeout is how long a server has from SIGTERM to exit before SIGKILL.
	StopTimeout  = 30 * time.Second
	kubectlLimit = 2 * time.Minute
)

var (
	// Bin is the duet binary Main built (or the one BinEnv names).
	Bin string
	// HasRepairInterval reports whether Bin accepts the hidden
	// --repair-interval flag; tests that wait for the repair loop use it to
	// wait less, and fall back to the default interval otherwise.
	HasRepairInterval bool
)

// BinEnv names an already built duet binary to test instead of building
// one, such as an older version, to see a regression test fail.
const BinEnv = "DUET_TEST_BIN"

// Main builds bin/duet into a temporary directory (unless BinEnv is set),
// runs the tests, removes the directory and returns the exit code.
func Main(m *testing.M, who string) int {
	flag.Parse()
	dir, err := os.MkdirTemp("", "duet-"+who+"-")
	if err != nil {
		fmt.Fprintln(os.Stderr, who+":", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if Bin = os.Getenv(BinEnv); Bin == "" {
		if Bin, err = build(dir); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", who, err)
			return 1
		}
	}
	// The flag is hidden; an unknown flag fails before --data-dir is checked.
	out, _ := exec.Command(Bin, "server", "--repair-interval=1s").CombinedOutput()
	HasRepairInterval = !strings.Contains(string(out), "unknown flag")
	return m.Run()
}

// build runs go build ./cmd/duet of this module into dir.
func build(dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "duet")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/duet")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/duet in %s: %w", root, err)
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "built %s in %v\n", bin, time.Since(start).Round(time.Millisecond))
	}
	return bin, nil
}

// moduleRoot is the directory of the go.mod the tests belong to.
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
	proc *Process
}

// Process is one run of the duet binary.
type Process struct {
	cmd        *exec.Cmd
	done       chan struct{} // closed when the process has exited
	err        error         // Wait's result, set before done is closed
	logDone    chan struct{} // closed when its output is all copied
	kubeconfig chan string   // the path printed on "kubeconfig: PATH"
	exitedAt   time.Time     // set before done is closed
}

// exitedOnItsOwn describes a process that exited although no Stop or Kill
// asked it to, or returns "".
func (p *Process) exitedOnItsOwn() string {
	select {
	case <-p.done:
		return fmt.Sprintf("duet server (pid %d) exited at %s while the test was using it: %v (exit status 0 means a SIGTERM or SIGINT from outside this test, e.g. a pkill/killall of duet processes on this shared machine)",
			p.cmd.Process.Pid, p.exitedAt.Format("15:04:05.000"), ExitStatus(p.err))
	default:
		return ""
	}
}

// ExitStatus describes how a process ended ("exit status 0" for success).
func ExitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// StartServer starts `duet server` on a fresh t.TempDir() and waits until
// it serves (kubeconfig printed and written, /readyz ok). It is stopped
// (SIGTERM, SIGKILL after StopTimeout) when the test ends, and its output
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
	if opts.RepairFast && HasRepairInterval {
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

// SetFlag gives flag (as "--name") value at the next Start, replacing
// its value or adding it: a restart with other flags.
func (s *Server) SetFlag(flag, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i+1 < len(s.args); i++ {
		if s.args[i] == flag {
			s.args[i+1] = value
			return
		}
	}
	s.args = append(s.args, flag, value)
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
	p, err := StartProcess(s.args, s.log)
	if err != nil {
		s.mu.Unlock()
		t.Fatalf("starting duet server: %v", err)
	}
	s.proc = p
	s.mu.Unlock()
	s.waitReady(t, p)
}

// StartProcess runs the duet binary with args, its output copied to log,
// watching for the "kubeconfig: PATH" line a server prints once it serves.
func StartProcess(args []string, log *os.File) (*Process, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(Bin, args...)
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, err
	}
	pw.Close()
	p := &Process{cmd: cmd, done: make(chan struct{}), logDone: make(chan struct{}), kubeconfig: make(chan string, 1)}
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

func (s *Server) waitReady(t testing.TB, p *Process) {
	t.Helper()
	deadline := time.Now().Add(StartTimeout)
	var path string
	select {
	case path = <-p.kubeconfig:
	case <-p.done:
		<-p.logDone
		t.Fatalf("duet server exited before printing its kubeconfig (%v):\n%s", p.err, s.Tail(40))
	case <-time.After(time.Until(deadline)):
		t.Fatalf("duet server printed no kubeconfig within %v:\n%s", StartTimeout, s.Tail(40))
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
		t.Fatalf("duet server not ready within %v (%v; last /readyz: %s):\n%s", StartTimeout, err, last, s.Tail(40))
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

// Stop sends SIGTERM, waits up to StopTimeout, then SIGKILLs. It returns an
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
	case <-time.After(StopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		err = fmt.Errorf("did not exit within %v of SIGTERM; killed", StopTimeout)
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

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits until the process has exited and its output is copied, and
// returns how it exited.
func (p *Process) Wait() error {
	<-p.done
	<-p.logDone
	return p.err
}
