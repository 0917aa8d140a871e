package deathsig

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// child is a shell that answers one line with "alive", started with a
// parent-death signal by start on a goroutine whose locked thread then
// ends, as Duet's namespace code ends threads.
func child(t *testing.T, start func(*exec.Cmd) error) (answer func() (string, error)) {
	t.Helper()
	cmd := exec.Command("sh", "-c", "read x; echo alive")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	type started struct {
		tid int
		err error
	}
	res := make(chan started, 1)
	var run func()
	run = func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if unix.Gettid() == unix.Getpid() {
			// The runtime never ends the main thread: start from another
			// goroutine, which cannot land on this locked thread.
			go run()
			<-make(chan struct{}) // this goroutine ends with the test binary
		}
		res <- started{unix.Gettid(), start(cmd)}
	}
	go run()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	// The parent-death signal is sent while the thread exits, before it
	// leaves /proc.
	task := fmt.Sprintf("/proc/self/task/%d", r.tid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(task); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d did not end", r.tid)
		}
		runtime.Gosched()
	}
	return func() (string, error) {
		if _, err := io.WriteString(stdin, "x\n"); err != nil {
			return "", err
		}
		return bufio.NewReader(stdout).ReadString('\n')
	}
}

func TestChildOutlivesTheStartingThread(t *testing.T) {
	answer := child(t, Start)
	if got, err := answer(); got != "alive\n" || err != nil {
		t.Fatalf("child answered %q, %v: killed when the goroutine that started it ended its thread", got, err)
	}
}

// TestPlainStartDiesWithTheThread shows what Start prevents: the same
// child started with exec.Cmd.Start on that thread is killed.
func TestPlainStartDiesWithTheThread(t *testing.T) {
	answer := child(t, (*exec.Cmd).Start)
	if got, err := answer(); got == "alive\n" {
		t.Fatalf("child answered %q, %v: the kernel no longer sends the parent-death signal when the thread ends", got, err)
	}
}

func BenchmarkStart(b *testing.B) {
	for b.Loop() {
		cmd := exec.Command("true")
		if err := Start(cmd); err != nil {
			b.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			b.Fatal(err)
		}
	}
}
