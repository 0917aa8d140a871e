package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
	"k8s.io/streaming/pkg/httpstream"

	"github.com/duet-net/duet/internal/testutil/roottest"
)

const streamingPods = `
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  containers: [{name: c, image: ignored, command: [sh, -c, 'echo first; echo oops >&2; i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.2; done']}]
---
apiVersion: v1
kind: Pod
metadata: {name: two}
spec:
  containers:
  - {name: a, image: ignored, command: [sleep, infinity]}
  - {name: b, image: ignored, command: [sleep, infinity]}
---
apiVersion: v1
kind: Pod
metadata: {name: restarter}
spec:
  containers: [{name: c, image: ignored, command: [sh, -c, 'echo run; sleep 0.5; exit 1']}]
---
apiVersion: v1
kind: Pod
metadata: {name: listeners}
spec:
  containers:
  - {name: v4, image: ignored, command: [socat, 'TCP4-LISTEN:9004,bind=127.0.0.1,fork,reuseaddr', 'SYSTEM:echo from-v4']}
  - {name: v6, image: ignored, command: [socat, 'TCP6-LISTEN:9006,bind=[::1],fork,reuseaddr', 'SYSTEM:echo from-v6']}
---
apiVersion: v1
kind: Pod
metadata: {name: nocommand}
spec:
  containers: [{name: c, image: not-in-the-table}]
---
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  containers: [{name: c, image: ignored, stdin: true, command: [sh, -c, 'echo ready; while read l; do echo "got $l"; done']}]
`

// kubectlRun runs kubectl and returns its stdout, stderr and exit code.
func kubectlRun(t *testing.T, kubeconfig, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := osexec(kubeconfig, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

func osexec(kubeconfig string, args ...string) *exec.Cmd {
	return exec.Command("kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...)
}

func TestStreaming(t *testing.T) {
	if _, err := exec.LookPath("socat"); err != nil {
		t.Fatalf("socat is needed for the port-forward listeners: %v", err)
	}
	dataDir, kubeconfig := up(t)
	cmd := osexec(kubeconfig, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(streamingPods)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/talker", "pod/two", "pod/listeners", "pod/reader", "--timeout=90s")

	t.Run("exec", func(t *testing.T) {
		for _, ws := range []string{"true", "false"} {
			t.Run("websockets="+ws, func(t *testing.T) {
				t.Setenv("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", ws)
				if out, errOut, code := kubectlRun(t, kubeconfig, "", "exec", "talker", "--", "sh", "-c", "echo out; echo err >&2"); code != 0 || out != "out\n" || errOut != "err\n" {
					t.Errorf("exec: stdout %q stderr %q code %d, want out/err/0", out, errOut, code)
				}
				if _, _, code := kubectlRun(t, kubeconfig, "", "exec", "talker", "--", "sh", "-c", "exit 3"); code != 3 {
					t.Errorf("exit code %d, want 3", code)
				}
				if out, _, code := kubectlRun(t, kubeconfig, "some\ninput\n", "exec", "-i", "talker", "--", "wc", "-l"); code != 0 || strings.TrimSpace(out) != "2" {
					t.Errorf("exec -i: %q (code %d), want 2 lines counted", out, code)
				}
				if out, _, code := kubectlRun(t, kubeconfig, "", "exec", "two", "-c", "b", "--", "echo", "in-b"); code != 0 || out != "in-b\n" {
					t.Errorf("exec -c b: %q code %d", out, code)
				}
			})
		}
	})

	t.Run("client-go executors", func(t *testing.T) {
		spdy, ws := execExecutors(t, kubeconfig, &corev1.PodExecOptions{Command: []string{"sh", "-c", "cat; echo done; exit 7"}, Stdin: true, Stdout: true, Stderr: true})
		// As kubectl does: SPDY only when the WebSocket upgrade fails.
		fallback, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
		if err != nil {
			t.Fatal(err)
		}
		for name, e := range map[string]remotecommand.Executor{"spdy": spdy, "websocket": ws, "fallback": fallback} {
			var out, errb bytes.Buffer
			err := e.StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdin: strings.NewReader("in\n"), Stdout: &out, Stderr: &errb})
			t.Logf("%s: stderr %q", name, errb.String())
			var ce utilexec.CodeExitError
			if !errors.As(err, &ce) || ce.Code != 7 || out.String() != "in\ndone\n" {
				t.Errorf("%s: err %v, stdout %q; want exit 7 and in/done", name, err, out.String())
			}
		}
	})

	t.Run("exec with a terminal", func(t *testing.T) {
		spdy, ws := execExecutors(t, kubeconfig, &corev1.PodExecOptions{Command: []string{"sh", "-c", "tty; stty size"}, Stdin: true, Stdout: true, TTY: true})
		for name, e := range map[string]remotecommand.Executor{"spdy": spdy, "websocket": ws} {
			var out bytes.Buffer
			sizes := &fixedSize{size: remotecommand.TerminalSize{Width: 123, Height: 45}}
			stdin, hold := io.Pipe() // open for the whole session, as a terminal is
			err := e.StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdin: stdin, Stdout: &out, Tty: true, TerminalSizeQueue: sizes})
			hold.Close()
			lines := strings.Split(strings.TrimSpace(strings.ReplaceAll(out.String(), "\r", "")), "\n")
			if err != nil || len(lines) != 2 || !strings.HasPrefix(lines[0], "/dev/pts/") || lines[1] != "45 123" {
				t.Errorf("%s: %q (%v), want a /dev/pts terminal of 45 rows and 123 columns", name, out.String(), err)
			}
		}
	})

	t.Run("exec errors", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"no such pod", []string{"exec", "nope", "--", "true"}, `pods "nope" not found`},
			{"no such container", []string{"exec", "talker", "-c", "nope", "--", "true"}, "container nope is not valid for pod talker"},
			{"several containers, none named", []string{"get", "--raw", "/api/v1/namespaces/default/pods/two/log"}, "choose one of: [a b]"},
			{"exec, several containers, none named", []string{"get", "--raw", "/api/v1/namespaces/default/pods/two/exec?command=true&stdout=1"}, "choose one of: [a b]"},
			{"exec without command", []string{"get", "--raw", "/api/v1/namespaces/default/pods/talker/exec?stdout=1"}, "at least 1 command"},
			{"exec without streams", []string{"get", "--raw", "/api/v1/namespaces/default/pods/talker/exec?command=true"}, "at least one of stdin, stdout or stderr"},
			{"port zero", []string{"get", "--raw", "/api/v1/namespaces/default/pods/talker/portforward?ports=0"}, "ports[0]: Invalid value: 0"},
			{"port too large", []string{"get", "--raw", "/api/v1/namespaces/default/pods/talker/portforward?ports=70000"}, "value out of range"},
			{"since and sinceTime", []string{"get", "--raw", "/api/v1/namespaces/default/pods/talker/log?sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z"}, "at most one of sinceTime or sinceSeconds"},
			{"no such command", []string{"exec", "talker", "--", "/does/not/exist"}, "/does/not/exist"},
			{"node identity", []string{"--kubeconfig", filepath.Join(dataDir, "nodes", "node1.kubeconfig"), "exec", "talker", "--", "true"}, `may not create pods/exec`},
			{"node identity logs", []string{"--kubeconfig", filepath.Join(dataDir, "nodes", "node1.kubeconfig"), "logs", "talker"}, `may not get pods/log`},
			{"bad tail", []string{"get", "--raw", "/api/v1/namespaces/default/pods/talker/log?tailLines=-3"}, "tailLines: Invalid value: -3"},
			{"bad limit", []string{"get", "--raw", "/api/v1/namespaces/default/pods/talker/log?limitBytes=0"}, "limitBytes: Invalid value: 0"},
			{"bad number", []string{"get", "--raw", "/api/v1/namespaces/default/pods/talker/log?tailLines=many"}, "many"},
			{"logs of a container that never started", []string{"logs", "nocommand"}, `container "c" in pod default/nocommand is waiting to start: ImageNotInTable`},
			{"exec into a container that never started", []string{"exec", "nocommand", "--", "true"}, `container "c" in pod default/nocommand is not running`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, errOut, code := kubectlRun(t, kubeconfig, "", tc.args...)
				if code == 0 || !strings.Contains(errOut, tc.want) {
					t.Errorf("kubectl %s: code %d, stderr %q; want failure mentioning %q", strings.Join(tc.args, " "), code, errOut, tc.want)
				}
			})
		}
	})

	t.Run("logs", func(t *testing.T) {
		roottest.Eventually(t, 20*time.Second, "five ticks logged", func() error {
			if out := string(kubectl(t, kubeconfig, "logs", "talker")); !strings.Contains(out, "tick4\n") {
				return fmt.Errorf("logs so far: %q", out)
			}
			return nil
		})
		all := string(kubectl(t, kubeconfig, "logs", "talker"))
		// stdout and stderr are separate pipes: their order is the
		// order in which the agent read them. stdout's own lines keep
		// their order; stderr's line comes in early, but may follow a
		// tick written just after it.
		var stdoutLines []string
		sawOops := false
		for _, l := range strings.Split(all, "\n")[:6] {
			if l == "oops" {
				sawOops = true
			} else {
				stdoutLines = append(stdoutLines, l)
			}
		}
		if !sawOops || stdoutLines[0] != "first" || stdoutLines[1] != "tick0" || stdoutLines[2] != "tick1" {
			t.Errorf("logs start %q, want first, tick0, tick1 with stderr's oops among them", all[:min(len(all), 40)])
		}
		tail := strings.Split(strings.TrimSuffix(string(kubectl(t, kubeconfig, "logs", "talker", "--tail", "2")), "\n"), "\n")
		if len(tail) != 2 || !strings.HasPrefix(tail[0], "tick") || !strings.HasPrefix(tail[1], "tick") {
			t.Errorf("--tail 2: %q", tail)
		}
		if out := string(kubectl(t, kubeconfig, "logs", "talker", "--limit-bytes", "4")); out != all[:4] {
			t.Errorf("--limit-bytes 4: %q", out)
		}
		ts := strings.SplitN(string(kubectl(t, kubeconfig, "logs", "talker", "--timestamps", "--tail", "1")), " ", 2)
		if _, err := time.Parse(time.RFC3339Nano, ts[0]); err != nil || len(ts) != 2 || !strings.HasPrefix(ts[1], "tick") {
			t.Errorf("--timestamps: %q (%v)", ts, err)
		}
		since := string(kubectl(t, kubeconfig, "logs", "talker", "--since", "1s"))
		if strings.Contains(since, "first") || !strings.Contains(since, "tick") {
			t.Errorf("--since 1s has the first line or no ticks: %q", since)
		}
		if out := string(kubectl(t, kubeconfig, "logs", "two", "-c", "a")); out != "" {
			t.Errorf("logs -c a of a silent container: %q", out)
		}

		// -f keeps delivering lines written after it started.
		f := osexec(kubeconfig, "logs", "-f", "talker", "--tail", "1")
		stdout, err := f.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = f.Process.Kill(); _ = f.Wait() }()
		sc := bufio.NewScanner(stdout)
		var seen []int
		for len(seen) < 5 && sc.Scan() {
			n, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "tick"))
			if err != nil {
				t.Fatalf("logs -f line %q", sc.Text())
			}
			seen = append(seen, n)
		}
		for i := 1; i < len(seen); i++ {
			if seen[i] != seen[i-1]+1 {
				t.Fatalf("logs -f lines out of sequence: %v", seen)
			}
		}
		if len(seen) < 5 {
			t.Fatalf("logs -f ended after %v: %v", seen, sc.Err())
		}
	})

	t.Run("logs --previous", func(t *testing.T) {
		roottest.Eventually(t, 60*time.Second, "restarter restarted", func() error {
			out, errOut, code := kubectlRun(t, kubeconfig, "", "logs", "restarter", "--previous")
			if code != 0 || out != "run\n" {
				return fmt.Errorf("code %d, stdout %q, stderr %q", code, out, errOut)
			}
			return nil
		})
		_, errOut, code := kubectlRun(t, kubeconfig, "", "logs", "talker", "--previous")
		if code == 0 || !strings.Contains(errOut, "previous terminated container") {
			t.Errorf("--previous of a never restarted container: code %d, %q", code, errOut)
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		for _, ws := range []string{"true", "false"} {
			t.Run("websockets="+ws, func(t *testing.T) {
				t.Setenv("KUBECTL_PORT_FORWARD_WEBSOCKETS", ws)
				pf := osexec(kubeconfig, "port-forward", "pod/listeners", ":9004", ":9006", ":9009")
				stdout, err := pf.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				// Polled below while kubectl still writes it.
				var errb roottest.Buffer
				pf.Stderr = &errb
				if err := pf.Start(); err != nil {
					t.Fatal(err)
				}
				defer func() { _ = pf.Process.Kill(); _ = pf.Wait() }()
				local := map[string]string{}
				sc := bufio.NewScanner(stdout)
				for len(local) < 3 && sc.Scan() {
					// "Forwarding from 127.0.0.1:PORT -> REMOTE"
					var addr, remote string
					if _, err := fmt.Sscanf(sc.Text(), "Forwarding from %s -> %s", &addr, &remote); err == nil && strings.HasPrefix(addr, "127.0.0.1:") {
						local[remote] = addr
					}
				}
				if len(local) < 3 {
					t.Fatalf("port-forward printed %v; stderr %s", local, errb.String())
				}
				for remote, want := range map[string]string{"9004": "from-v4\n", "9006": "from-v6\n"} {
					conn, err := net.DialTimeout("tcp", local[remote], 5*time.Second)
					if err != nil {
						t.Fatal(err)
					}
					_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
					got, err := io.ReadAll(conn)
					conn.Close()
					if string(got) != want {
						t.Errorf("through port %s: %q (%v), want %q", remote, got, err, want)
					}
				}
				// A closed port: the connection ends without data and
				// kubectl reports why.
				conn, err := net.DialTimeout("tcp", local["9009"], 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				got, _ := io.ReadAll(conn)
				conn.Close()
				if len(got) != 0 {
					t.Errorf("closed port gave data %q", got)
				}
				roottest.Eventually(t, 10*time.Second, "kubectl reports the closed port", func() error {
					if !strings.Contains(errb.String(), "nothing accepts connections on port 9009") {
						return fmt.Errorf("stderr: %q", errb.String())
					}
					return nil
				})
			})
		}
	})

	t.Run("attach", func(t *testing.T) {
		a := osexec(kubeconfig, "attach", "talker")
		stdout, err := a.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = a.Process.Kill(); _ = a.Wait() }()
		sc := bufio.NewScanner(stdout)
		for got := 0; got < 3; {
			if !sc.Scan() {
				t.Fatalf("attach ended: %v", sc.Err())
			}
			if strings.HasPrefix(sc.Text(), "tick") {
				got++
			}
		}
	})

	t.Run("attach with stdin", func(t *testing.T) {
		a := osexec(kubeconfig, "attach", "-i", "reader")
		stdin, err := a.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := a.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = a.Process.Kill(); _ = a.Wait() }()
		// Lines are sent until one comes back: kubectl attaches after it
		// started, and what the container read before that went to its log.
		sc := bufio.NewScanner(stdout)
		got := make(chan string, 100)
		go func() {
			for sc.Scan() {
				got <- sc.Text()
			}
			close(got)
		}()
		for i := 0; ; i++ {
			if i == 100 {
				t.Fatal("attach -i: no line echoed back")
			}
			fmt.Fprintf(stdin, "hello%d\n", i)
			select {
			case line, ok := <-got:
				if !ok {
					t.Fatal("attach -i ended")
				}
				if !strings.HasPrefix(line, "got hello") {
					t.Fatalf("attach -i: %q", line)
				}
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	})

	t.Run("cp", func(t *testing.T) {
		// Pods share the host's file system: copy into a fresh directory.
		dir := t.TempDir()
		src := filepath.Join(dir, "src")
		data := bytes.Repeat([]byte("duet\n"), 10000)
		if err := os.WriteFile(src, data, 0o644); err != nil {
			t.Fatal(err)
		}
		kubectl(t, kubeconfig, "cp", src, "talker:"+filepath.Join(dir, "in-pod"))
		kubectl(t, kubeconfig, "cp", "talker:"+filepath.Join(dir, "in-pod"), filepath.Join(dir, "back"))
		got, err := os.ReadFile(filepath.Join(dir, "back"))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("copied back %d bytes (%v), want %d", len(got), err, len(data))
		}
	})

	// The pods are listed so that a failure above shows their state.
	if t.Failed() {
		pods, _ := kubernetesPods(kubeconfig)
		t.Logf("pods: %v", pods)
	}
}

func kubernetesPods(kubeconfig string) ([]string, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	list, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range list.Items {
		out = append(out, fmt.Sprintf("%s=%s", p.Name, p.Status.Phase))
	}
	slices.Sort(out)
	return out, nil
}

// fixedSize reports one terminal size, then nil, which tells the
// executor that no more will come.
type fixedSize struct {
	size remotecommand.TerminalSize
	sent bool
}

func (f *fixedSize) Next() *remotecommand.TerminalSize {
	if f.sent {
		return nil
	}
	f.sent = true
	return &f.size
}

// execExecutors returns client-go's SPDY and WebSocket executors of an exec
// in the pod talker.
func execExecutors(t *testing.T, kubeconfig string, opts *corev1.PodExecOptions) (spdy, ws remotecommand.Executor) {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	req := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace("default").Name("talker").SubResource("exec").
		VersionedParams(opts, scheme.ParameterCodec)
	spdy, err = remotecommand.NewSPDYExecutor(cfg, "POST", req.URL())
	if err != nil {
		t.Fatal(err)
	}
	ws, err = remotecommand.NewWebSocketExecutor(cfg, "GET", req.URL().String())
	if err != nil {
		t.Fatal(err)
	}
	return spdy, ws
}
