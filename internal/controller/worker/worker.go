// Package worker is the work-queue loop that Duet's controllers and the
// agent's loops share, as client-go's workqueue is meant to be driven: a
// worker takes a key, reconciles it, forgets the key's backoff when that
// worked or puts it back rate-limited when it failed, and marks it done,
// so that a key is never reconciled by two workers at once and a failing
// key is retried with the queue's own backoff.
//
// What a loop does with a key, and the backoff its queue was built with,
// stay the caller's; so does how a failure is logged, through Options.
package worker

import (
	"context"
	"log/slog"
	"sync"

	"github.com/go-logr/logr"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// Sync reconciles one key. An error puts the key back on the queue
// rate-limited; nil forgets its backoff.
type Sync[T comparable] func(ctx context.Context, key T) error

// Options says how a loop logs the syncs that failed. Logs go to the
// logger of the context Run was given (klog.FromContext).
type Options struct {
	// KeyName is what a key stands for in log lines ("service",
	// "node"); "key" if empty.
	KeyName string
	// Failed is the message of a failed sync, logged as an error with it
	// ("Syncing EndpointSlices failed; will retry"); "Sync failed; will
	// retry" if empty.
	Failed string
	// Expected, if set, picks out the failures that are part of normal
	// operation (an informer cache behind the loop's own writes, content
	// still being deleted, a range that is full for now). They are
	// retried like any other, but logged at verbosity ExpectedV with
	// their reason, under the message Waiting, instead of as errors.
	Expected  func(error) bool
	ExpectedV int
	Waiting   string
}

// Slot holds the queue of the Run in progress of a controller that may be
// run again (after leadership is regained): nil between runs, so that
// event handlers add keys to the current run's queue, and drop what comes
// between runs, which a Run starts by listing anyway.
type Slot[T comparable] struct {
	mu sync.Mutex
	q  workqueue.TypedRateLimitingInterface[T]
}

// Fill makes q the current queue, and returns the function that empties
// the slot and shuts q down, for the Run to defer.
func (s *Slot[T]) Fill(q workqueue.TypedRateLimitingInterface[T]) (release func()) {
	s.mu.Lock()
	s.q = q
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		if s.q == q {
			s.q = nil
		}
		s.mu.Unlock()
		q.ShutDown()
	}
}

// Add adds key to the current queue, if a Run is in progress.
func (s *Slot[T]) Add(key T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.q != nil {
		s.q.Add(key)
	}
}

// Run reconciles keys from q with workers goroutines (at least one) until
// q is shut down. It shuts q down when ctx is done, and returns once every
// worker has returned.
func Run[T comparable](ctx context.Context, q workqueue.TypedRateLimitingInterface[T], workers int, reconcile Sync[T], opts Options) {
	stop := context.AfterFunc(ctx, q.ShutDown)
	defer stop()
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Go(func() {
			for ProcessNext(ctx, q, reconcile, opts) {
			}
		})
	}
	wg.Wait()
}

// ProcessNext reconciles the next key of q, waiting for one, and reports
// false once q is shut down.
func ProcessNext[T comparable](ctx context.Context, q workqueue.TypedRateLimitingInterface[T], reconcile Sync[T], opts Options) bool {
	key, quit := q.Get()
	if quit {
		return false
	}
	defer q.Done(key)
	err := reconcile(ctx, key)
	if err == nil {
		q.Forget(key)
		return true
	}
	opts.logFailure(klog.FromContext(ctx), key, err)
	q.AddRateLimited(key)
	return true
}

// WithSlog returns ctx with log as its logger, for loops of components
// that log through log/slog (the agent's): Run logs to it, errors under
// the key "err".
func WithSlog(ctx context.Context, log *slog.Logger) context.Context {
	return klog.NewContext(ctx, logr.FromSlogHandler(log.Handler()))
}

func (o Options) logFailure(logger klog.Logger, key any, err error) {
	keyName := o.KeyName
	if keyName == "" {
		keyName = "key"
	}
	if o.Expected != nil && o.Expected(err) {
		msg := o.Waiting
		if msg == "" {
			msg = "Not done yet; will retry"
		}
		logger.V(o.ExpectedV).Info(msg, keyName, key, "reason", err.Error())
		return
	}
	msg := o.Failed
	if msg == "" {
		msg = "Sync failed; will retry"
	}
	logger.Error(err, msg, keyName, key)
}
