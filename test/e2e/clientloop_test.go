package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// clientLoop is the traffic that must flow while the cluster changes:
// from a pod's namespace, every 20 ms, a request to each of urls in turn
// over a new connection, and one to keptURL (a /clientip) over a
// kept-alive connection that must never be replaced.
type clientLoop struct {
	ok, failed, keptBroke atomic.Int64
	failures              sync.Map // time and URL -> error
	stop                  chan struct{}
	done                  sync.WaitGroup
	once                  sync.Once
}

// startClientLoop starts the loop in the namespace at netns and waits for
// its first ten answers. It is stopped when the test ends at the latest.
func startClientLoop(t *testing.T, netns string, urls []string, keptURL string) *clientLoop {
	t.Helper()
	fresh, kept := podClient(t, netns, false), podClient(t, netns, true)
	l := &clientLoop{stop: make(chan struct{})}
	l.done.Go(func() { l.run(fresh, kept, urls, keptURL) })
	t.Cleanup(l.Stop)
	if err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return l.ok.Load() >= 10, nil
	}); err != nil {
		t.Fatalf("the client loop gets no answers: %d answered, %d failed", l.ok.Load(), l.failed.Load())
	}
	return l
}

func (l *clientLoop) run(fresh, kept *http.Client, urls []string, keptURL string) {
	for i := 0; ; i++ {
		select {
		case <-l.stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
		u := urls[i%len(urls)]
		if err := get(fresh, u); err != nil {
			l.failed.Add(1)
			l.failures.Store(time.Now().Format("15:04:05.000")+" "+u, err.Error())
		} else {
			l.ok.Add(1)
		}
		if _, reused, err := clientIP(kept, keptURL); err != nil || (!reused && i > 0) {
			l.keptBroke.Add(1)
			l.failures.Store(time.Now().Format("15:04:05.000")+" kept-alive", fmt.Sprint(err, " reused=", reused))
		}
	}
}

// Stop ends the loop.
func (l *clientLoop) Stop() {
	l.once.Do(func() { close(l.stop); l.done.Wait() })
}

// check stops the loop, logs what it saw, and fails t if a request failed,
// the kept-alive connection was replaced, or fewer than minOK answered.
func (l *clientLoop) check(t *testing.T, during string, minOK int64) {
	t.Helper()
	l.Stop()
	l.failures.Range(func(k, v any) bool { t.Logf("failure at %s: %s", k, v); return true })
	t.Logf("client loop over the first family during %s: %d requests answered, %d failed; the kept-alive connection broke %d times",
		during, l.ok.Load(), l.failed.Load(), l.keptBroke.Load())
	if l.failed.Load() != 0 || l.keptBroke.Load() != 0 || l.ok.Load() < minOK {
		t.Errorf("the first family's traffic was disturbed during %s: %d answered (want %d at least), %d failed, the kept-alive connection broke %d times",
			during, l.ok.Load(), minOK, l.failed.Load(), l.keptBroke.Load())
	}
}
