// Package deathsig starts child processes that the kernel kills when the
// process that started them dies (SysProcAttr.Pdeathsig).
//
// Linux sends the parent-death signal when the *thread* that forked the
// child ends, not the process. The Go runtime ends threads: one whose
// goroutine locked it and exited without unlocking (as Duet's namespace
// code does on purpose, so a changed thread is never reused) goes with that
// goroutine. A child forked from such a thread earlier is then killed at a
// random moment, with SIGKILL, while its parent lives on. So every such
// child is forked here, on one thread locked for the life of the process,
// which never ends before the process does.
package deathsig

import (
	"os/exec"
	"runtime"
	"sync"
)

type request struct {
	start func() error
	done  chan error
}

var (
	once     sync.Once
	requests chan request
)

// spawner runs start functions on the thread it keeps locked forever.
func spawner() {
	runtime.LockOSThread()
	for r := range requests {
		r.done <- r.start()
	}
}

// Do runs start (a call of exec.Cmd.Start, or of a library's function
// that calls it, such as a pty's) on the spawner's thread and returns its
// error. start must not call Do.
func Do(start func() error) error {
	once.Do(func() {
		requests = make(chan request)
		go spawner()
	})
	done := make(chan error, 1)
	requests <- request{start: start, done: done}
	return <-done
}

// Start starts cmd on the spawner's thread: cmd.SysProcAttr.Pdeathsig then
// fires when this process ends, not when the calling goroutine's thread
// does.
func Start(cmd *exec.Cmd) error { return Do(cmd.Start) }
