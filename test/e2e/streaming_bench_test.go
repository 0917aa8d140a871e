package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/duet-net/duet/internal/agent/crilog"
	"github.com/duet-net/duet/internal/testutil/roottest"
	"github.com/duet-net/duet/test/harness"
)

// percentiles returns the p50 and p99 of ds.
func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	slices.Sort(ds)
	return ds[len(ds)/2], ds[min(len(ds)-1, len(ds)*99/100)]
}

// BenchmarkExecRoundTrip: `kubectl exec POD -- true` (kubectl → API
// server → agent → nsenter, over WebSocket and over SPDY) against
// `duet exec` (straight into the pod's namespace on this host), 50 runs
// each; reports p50 and p99 in milliseconds.
func BenchmarkExecRoundTrip(b *testing.B) {
	const runs = 50
	dataDir, kubeconfig := up(b, "--nodes", "1")
	if out, err := osexec(kubeconfig, "run", "idle", "--image=ignored", "--command", "--", "sleep", "infinity").CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	if out, err := osexec(kubeconfig, "wait", "--for=condition=Ready", "pod/idle", "--timeout=60s").CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	for _, tc := range []struct {
		name string
		env  string
		cmd  func() *exec.Cmd
	}{
		{"kubectl-websocket", "KUBECTL_REMOTE_COMMAND_WEBSOCKETS=true", func() *exec.Cmd { return osexec(kubeconfig, "exec", "idle", "--", "true") }},
		{"kubectl-spdy", "KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false", func() *exec.Cmd { return osexec(kubeconfig, "exec", "idle", "--", "true") }},
		{"duet-exec", "", func() *exec.Cmd {
			return exec.Command(harness.Bin, "exec", "--data-dir", dataDir, "idle", "--", "true")
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				var ds []time.Duration
				for range runs {
					c := tc.cmd()
					c.Env = append(os.Environ(), tc.env)
					start := time.Now()
					if out, err := c.CombinedOutput(); err != nil {
						b.Fatalf("%v: %v: %s", c.Args, err, out)
					}
					ds = append(ds, time.Since(start))
				}
				p50, p99 := percentiles(ds)
				b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
			}
		})
	}
}

// BenchmarkLogThroughput: a container writes 9 MB of log as fast as it
// can (9,000 lines of 1,000 bytes: one file, under the 10 MiB rotation
// size); reported are its write rate (CRI records as the agent wrote
// them), and the rate of reading it back through pods/log (client-go,
// and kubectl) against reading the file directly (raw bytes, and parsed
// by cri-client's reader as the agent serves it).
func BenchmarkLogThroughput(b *testing.B) {
	const content = 9000 * 1001 // bytes the container writes, newlines included
	dataDir, kubeconfig := up(b, "--nodes", "1")
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	pod, err := client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "writer"},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{
			Name: "c", Image: "ignored",
			Command: []string{"sh", "-c", `yes "$(head -c 1000 /dev/zero | tr '\0' x)" | head -n 9000`},
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	roottest.Eventually(b, 2*time.Minute, "the writer to finish", func() error {
		p, err := client.CoreV1().Pods("default").Get(ctx, "writer", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodSucceeded {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		return nil
	})
	logFile := filepath.Join(dataDir, "nodes", "node1", "pods", "default_writer_"+string(pod.UID), "c", "0.log")
	st, err := os.Stat(logFile)
	if err != nil {
		b.Fatal(err)
	}
	mb := func(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }
	// The write rate, from the first and last records' timestamps.
	data, err := os.ReadFile(logFile)
	if err != nil {
		b.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	first, err1 := time.Parse(time.RFC3339Nano, strings.Fields(lines[0])[0])
	last, err2 := time.Parse(time.RFC3339Nano, strings.Fields(lines[len(lines)-1])[0])
	if err1 != nil || err2 != nil || len(lines) != 9000 {
		b.Fatalf("log of %d records: %v %v", len(lines), err1, err2)
	}
	b.Run("container-write", func(b *testing.B) {
		b.ReportMetric(mb(content, last.Sub(first)), "MB/s")
	})
	plainCfg := *cfg
	plainCfg.DisableCompression = true
	plain := kubernetes.NewForConfigOrDie(&plainCfg)
	read := map[string]func() (int64, error){
		"pods-log-client-go": func() (int64, error) {
			rc, err := client.CoreV1().Pods("default").GetLogs("writer", &corev1.PodLogOptions{}).Stream(ctx)
			if err != nil {
				return 0, err
			}
			defer rc.Close()
			return io.Copy(io.Discard, rc)
		},
		"pods-log-client-go-uncompressed": func() (int64, error) {
			rc, err := plain.CoreV1().Pods("default").GetLogs("writer", &corev1.PodLogOptions{}).Stream(ctx)
			if err != nil {
				return 0, err
			}
			defer rc.Close()
			return io.Copy(io.Discard, rc)
		},
		"kubectl-logs": func() (int64, error) {
			c := osexec(kubeconfig, "logs", "writer")
			out, err := c.StdoutPipe()
			if err != nil {
				return 0, err
			}
			if err := c.Start(); err != nil {
				return 0, err
			}
			n, _ := io.Copy(io.Discard, out)
			return n, c.Wait()
		},
		"file-raw": func() (int64, error) {
			f, err := os.Open(logFile)
			if err != nil {
				return 0, err
			}
			defer f.Close()
			return io.Copy(io.Discard, f)
		},
		"file-parsed": func() (int64, error) {
			cw := &countWriter{}
			err := crilog.Read(ctx, logFile, &crilog.ReadOptions{}, nil, cw, cw)
			return cw.n, err
		},
	}
	for _, name := range []string{"pods-log-client-go", "pods-log-client-go-uncompressed", "kubectl-logs", "file-raw", "file-parsed"} {
		b.Run(name, func(b *testing.B) {
			for range b.N {
				var ds []time.Duration
				for range 5 {
					start := time.Now()
					n, err := read[name]()
					if err != nil {
						b.Fatal(err)
					}
					if name != "file-raw" && n != content || name == "file-raw" && n != st.Size() {
						b.Fatalf("read %d bytes, want %d", n, content)
					}
					ds = append(ds, time.Since(start))
				}
				p50, _ := percentiles(ds)
				n := int64(content)
				if name == "file-raw" {
					n = st.Size()
				}
				b.ReportMetric(mb(n, p50), "MB/s")
			}
		})
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
