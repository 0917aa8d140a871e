package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/test/harness"
)

// promptly bounds how long a server may take to give up: a failure to
// start, or a signal while starting.
const promptly = 10 * time.Second

// TestDataDirInUse: a second `duet server` on a data directory a running
// one holds fails at once, naming the directory and the holder's PID, and
// leaves the running server and its files alone.
func TestDataDirInUse(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range})
	kubeconfig, err := os.ReadFile(srv.Kubeconfig)
	fatalIf(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, harness.Bin, "server", "--data-dir", srv.DataDir, "--secure-port", "0",
		"--service-cluster-ip-range", v4Range).CombinedOutput()
	elapsed := time.Since(start)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
		t.Fatalf("second server on %s: %v after %v, want a non-zero exit:\n%s", srv.DataDir, err, elapsed.Round(time.Millisecond), out)
	}
	t.Logf("second server exited with %d after %v", exit.ExitCode(), elapsed.Round(time.Millisecond))
	if elapsed > promptly {
		t.Errorf("second server took %v to fail, want under %v", elapsed.Round(time.Millisecond), promptly)
	}
	if want := fmt.Sprintf("data directory %s is in use by duet server (pid %d)", srv.DataDir, srv.PID()); !strings.Contains(string(out), want) {
		t.Errorf("second server's output lacks %q:\n%s", want, out)
	}

	if body, err := srv.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil || string(body) != "ok" {
		t.Errorf("first server after the second one's attempt: /readyz %q, %v", body, err)
	}
	if now, err := os.ReadFile(srv.Kubeconfig); err != nil || !bytes.Equal(now, kubeconfig) {
		t.Errorf("the second server changed the first one's %s (%v)", srv.Kubeconfig, err)
	}
}

// TestDataDirLockAfterKill9: the lock file a SIGKILLed server leaves
// behind, its PID inside, does not keep a new server from starting there.
func TestDataDirLockAfterKill9(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range})
	lock := filepath.Join(srv.DataDir, "lock")
	old := srv.PID()
	srv.Kill(t)
	data, err := os.ReadFile(lock)
	fatalIf(t, err)
	if strings.TrimSpace(string(data)) != strconv.Itoa(old) {
		t.Fatalf("%s holds %q, want the killed server's PID %d", lock, data, old)
	}
	srv.Restart(t)
	data, err = os.ReadFile(lock)
	fatalIf(t, err)
	if strings.TrimSpace(string(data)) != strconv.Itoa(srv.PID()) {
		t.Errorf("%s holds %q after the restart, want the new PID %d", lock, data, srv.PID())
	}
}

// TestSignalWhileStarting: SIGTERM or SIGINT ends a server promptly at
// any step of its start, here while its embedded etcd waits for its
// database (held by someone else, as a second server's etcd waited for the
// first one's) and while it waits for an external etcd that does not
// answer.
func TestSignalWhileStarting(t *testing.T) {
	t.Parallel()
	// A data directory with an etcd database in it.
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range})
	fatalIf(t, srv.Stop())
	db := filepath.Join(srv.DataDir, "etcd", "data", "member", "snap", "db")
	f, err := os.OpenFile(db, os.O_RDWR, 0)
	fatalIf(t, err)
	defer f.Close()

	for _, step := range []struct {
		name  string
		args  []string
		setup func(t *testing.T)
		// logged is what the server prints when it reaches the step.
		logged string
	}{
		{"embedded etcd waiting for its database", []string{"--data-dir", srv.DataDir},
			func(t *testing.T) {
				// bbolt's own lock, as a running etcd holds it.
				fatalIf(t, unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB))
			}, "starting embedded etcd"},
		{"external etcd not answering", []string{"--data-dir", t.TempDir(), "--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", freeLoopbackPort(t))},
			func(*testing.T) {}, "connecting to etcd"},
	} {
		step.setup(t)
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
			t.Run(step.name+"/"+sig.String(), func(t *testing.T) {
				logPath := filepath.Join(t.TempDir(), "server.log")
				log, err := os.Create(logPath)
				fatalIf(t, err)
				defer log.Close()
				args := append([]string{"server", "--secure-port", "0", "--service-cluster-ip-range", v4Range}, step.args...)
				p, err := startProcess(args, log)
				fatalIf(t, err)
				t.Cleanup(func() {
					_ = p.Signal(syscall.SIGKILL)
					_ = p.Wait()
				})
				// The process is at the step once it says so.
				eventually(t, startTimeout, "the server reaches: "+step.logged, func() error {
					data, _ := os.ReadFile(logPath)
					if !strings.Contains(string(data), step.logged) {
						return errors.New("not yet")
					}
					return nil
				})
				signalled := time.Now()
				fatalIf(t, p.Signal(sig))
				select {
				case <-p.Done():
				case <-time.After(promptly):
					data, _ := os.ReadFile(logPath)
					t.Fatalf("still running %v after %s while starting:\n%s", promptly, sig, data)
				}
				perr := p.Wait()
				data, _ := os.ReadFile(logPath)
				t.Logf("exited %v after %s: %v", time.Since(signalled).Round(time.Millisecond), sig, exitStatus(perr))
				if perr != nil || !strings.Contains(string(data), "stopped while starting") {
					t.Errorf("after %s while starting: %v, want exit status 0 and \"stopped while starting\" in the output:\n%s", sig, exitStatus(perr), data)
				}
			})
		}
	}
}
