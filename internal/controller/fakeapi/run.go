package fakeapi

import (
	"context"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Background runs run in a goroutine, with a context of its own derived
// from ctx, as a test runs a controller. The function it returns cancels
// that context and waits for run to return; it may be called more than
// once (register it with t.Cleanup, and call it to stop early).
func Background(ctx context.Context, run func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(ctx)
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

// Eventually polls cond every 10ms until it holds, ctx ends or timeout
// passes, and reports whether it held and what cond said last (for the
// test's failure message).
func Eventually(ctx context.Context, timeout time.Duration, cond func() (bool, string)) (bool, string) {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		var ok bool
		ok, last = cond()
		return ok, nil
	})
	return err == nil, last
}
