package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

func newQueue() workqueue.TypedRateLimitingInterface[string] {
	return workqueue.NewTypedRateLimitingQueue(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Millisecond, 10*time.Millisecond))
}

// logs captures a logger's lines.
type logs struct {
	mu    sync.Mutex
	lines []string
}

func (l *logs) context() context.Context {
	logger := funcr.New(func(prefix, args string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.lines = append(l.lines, args)
	}, funcr.Options{Verbosity: 10, LogInfoLevel: ptrTo("v")})
	return klog.NewContext(context.Background(), logger)
}

func ptrTo(s string) *string { return &s }

func (l *logs) all() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// A key that fails is retried with the queue's backoff until it syncs; a
// key that syncs has its backoff forgotten.
func TestProcessNextRetriesAndForgets(t *testing.T) {
	q := newQueue()
	defer q.ShutDown()
	fails := 2
	reconcile := func(_ context.Context, key string) error {
		if fails > 0 {
			fails--
			return fmt.Errorf("sync of %s failed", key)
		}
		return nil
	}
	var l logs
	ctx := l.context()
	q.Add("ns/web")
	for i := range 3 {
		if !ProcessNext(ctx, q, reconcile, Options{KeyName: "service", Failed: "Syncing web failed; will retry"}) {
			t.Fatalf("ProcessNext %d reported a shut-down queue", i)
		}
		want := min(i+1, 2)
		if i == 2 {
			want = 0 // forgotten once it synced
		}
		if got := q.NumRequeues("ns/web"); got != want {
			t.Errorf("after sync %d: %d requeues, want %d", i, got, want)
		}
	}
	if q.Len() != 0 {
		t.Errorf("queue holds %d keys after the key synced", q.Len())
	}
	out := l.all()
	if n := strings.Count(out, `"msg"="Syncing web failed; will retry"`); n != 2 {
		t.Errorf("logged %d failures, want 2:\n%s", n, out)
	}
	if !strings.Contains(out, `"service"="ns/web"`) || !strings.Contains(out, `"error"="sync of ns/web failed"`) {
		t.Errorf("failure log does not name the key and the error:\n%s", out)
	}
}

// Expected failures are retried the same way but logged at the verbosity
// asked, with their reason, not as errors.
func TestExpectedFailuresAreQuiet(t *testing.T) {
	errBehind := errors.New("cache behind")
	q := newQueue()
	defer q.ShutDown()
	var l logs
	q.Add("k")
	ProcessNext(l.context(), q, func(context.Context, string) error { return fmt.Errorf("wrapped: %w", errBehind) },
		Options{Expected: func(err error) bool { return errors.Is(err, errBehind) }, ExpectedV: 4, Waiting: "Cache behind; will retry"})
	if q.NumRequeues("k") != 1 {
		t.Errorf("an expected failure was not requeued")
	}
	out := l.all()
	if !strings.Contains(out, `"v"=4`) || !strings.Contains(out, `"msg"="Cache behind; will retry"`) ||
		!strings.Contains(out, `"reason"="wrapped: cache behind"`) || strings.Contains(out, `"error"`) {
		t.Errorf("expected failure logged as\n%s\nwant a V(4) info line with its reason and no error", out)
	}
}

// Run spreads keys over its workers, never gives one key to two workers
// at once, and returns once ctx is done.
func TestRunStopsWithContext(t *testing.T) {
	q := newQueue()
	ctx, cancel := context.WithCancel(context.Background())
	var synced, busy atomic.Int64
	var inFlight sync.Map
	reconcile := func(_ context.Context, key string) error {
		if _, dup := inFlight.LoadOrStore(key, true); dup {
			t.Errorf("key %s synced by two workers at once", key)
		}
		busy.Add(1)
		time.Sleep(time.Millisecond) // hold the key while others run
		busy.Add(-1)
		inFlight.Delete(key)
		synced.Add(1)
		return nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, q, 4, reconcile, Options{})
	}()
	for i := range 200 {
		q.Add(fmt.Sprintf("k%d", i%20))
	}
	deadline := time.Now().Add(10 * time.Second)
	for q.Len() > 0 || busy.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("queue not drained: %d keys left", q.Len())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
	if !q.ShuttingDown() {
		t.Error("Run returned with its queue still open")
	}
	if synced.Load() < 20 {
		t.Errorf("%d syncs, want every one of the 20 keys synced", synced.Load())
	}
}

// The agent's loops log through log/slog: a failure is an error record
// with the key and the error under "err".
func TestWithSlog(t *testing.T) {
	var buf strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), nil))
	q := newQueue()
	defer q.ShutDown()
	q.Add("routes")
	ProcessNext(WithSlog(context.Background(), log), q, func(context.Context, string) error { return errors.New("no route to host") },
		Options{Failed: "Syncing routes failed; will retry"})
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	for _, want := range []string{"level=ERROR", `msg="Syncing routes failed; will retry"`, "key=routes", `err="no route to host"`} {
		if !strings.Contains(out, want) {
			t.Errorf("slog output %q lacks %s", out, want)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// A Slot passes keys to the queue of the Run in progress and drops them
// between runs.
func TestSlot(t *testing.T) {
	var s Slot[string]
	s.Add("before") // no Run: dropped
	q := newQueue()
	release := s.Fill(q)
	s.Add("during")
	if q.Len() != 1 {
		t.Fatalf("queue holds %d keys, want only the one added during the Run", q.Len())
	}
	release()
	if !q.ShuttingDown() {
		t.Error("release left the queue open")
	}
	s.Add("after") // dropped, and no panic on the shut-down queue
	next := newQueue()
	defer next.ShutDown()
	defer s.Fill(next)()
	s.Add("next run")
	if key, _ := next.Get(); key != "next run" {
		t.Errorf("the next Run's queue got %q", key)
	}
}
