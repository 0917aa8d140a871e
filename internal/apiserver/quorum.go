package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/healthz"
)

// quorumMonitor tells whether this server's etcd can commit writes: its
// member knows a leader, and a linearizable read (which needs a quorum)
// answers in time. A server cut off from its cluster's majority learns it
// within a few seconds, reports not ready, and refuses the requests that
// need a quorum at once, with a 503 saying why, instead of letting each
// wait out etcd's and the API server's timeouts.
type quorumMonitor struct {
	client *clientv3.Client
	// member is the embedded etcd, nil with --etcd-servers.
	member *EmbeddedEtcd
	// interval between probes; timeout of each read.
	interval, timeout time.Duration
	// failures is how many probes in a row must fail before the quorum
	// counts as lost: one slow read on a busy machine is not a partition.
	failures int

	state atomic.Pointer[quorumState]
}

type quorumState struct {
	ok     bool
	reason string
	since  time.Time
}

const quorumProbeKey = "/duet/quorum-probe"

func newQuorumMonitor(client *clientv3.Client, member *EmbeddedEtcd) *quorumMonitor {
	m := &quorumMonitor{client: client, member: member, interval: 500 * time.Millisecond, timeout: 2 * time.Second, failures: 2}
	m.state.Store(&quorumState{ok: true, since: time.Now()})
	return m
}

// Run probes until ctx is done.
func (m *quorumMonitor) Run(ctx context.Context) {
	failed := 0
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		reason := m.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		if reason == "" {
			failed = 0
			m.set(true, "")
		} else if failed++; failed >= m.failures || m.member != nil && !m.member.HasLeader() {
			m.set(false, reason)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *quorumMonitor) set(ok bool, reason string) {
	cur := m.state.Load()
	if cur.ok == ok && (ok || cur.reason == reason) {
		return
	}
	since := time.Now()
	if cur.ok == ok {
		since = cur.since
	}
	m.state.Store(&quorumState{ok: ok, reason: reason, since: since})
}

// probe returns why the quorum is lost, or "".
func (m *quorumMonitor) probe(ctx context.Context) string {
	if m.member != nil {
		if m.member.IsLearner() {
			return fmt.Sprintf("etcd member %s is a learner, not yet a voting member of its cluster", m.member.Name)
		}
		if !m.member.HasLeader() {
			return fmt.Sprintf("etcd member %s has no leader: it cannot reach a quorum of its cluster's members", m.member.Name)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	// A linearizable read goes through the leader's quorum; requiring a
	// leader makes a member without one answer at once.
	if _, err := m.client.Get(clientv3.WithRequireLeader(ctx), quorumProbeKey); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Sprintf("etcd did not answer a quorum read within %v: it cannot reach a quorum of its cluster's members", m.timeout)
		}
		return fmt.Sprintf("etcd refused a quorum read: %v", err)
	}
	return ""
}

// err is nil while the quorum holds.
func (m *quorumMonitor) err() error {
	st := m.state.Load()
	if st.ok {
		return nil
	}
	return fmt.Errorf("%s (since %s)", st.reason, st.since.UTC().Format(time.RFC3339))
}

// check is the readyz check etcd-quorum.
func (m *quorumMonitor) check() healthz.HealthChecker {
	return healthz.NamedCheck("etcd-quorum", func(*http.Request) error { return m.err() })
}

// filter answers the API requests that need etcd's quorum with a 503
// while it is lost: writes, and reads that must be current (no
// resourceVersion, so they read etcd). Watches and reads at a
// resourceVersion the watch cache serves go on.
func (m *quorumMonitor) filter(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := m.err()
		if err != nil && (r.URL.Path == "/readyz" || r.URL.Path == "/readyz/etcd-quorum") {
			// Kubernetes' own etcd checks run one after the other, each
			// waiting out its timeout against an etcd without a quorum:
			// answer at once what they would end up saying.
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "[-]etcd-quorum failed: %v\nreadyz check failed\n", err)
			return
		}
		if err == nil || !needsQuorum(r) {
			next.ServeHTTP(w, r)
			return
		}
		writeStatus(w, http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable,
			fmt.Sprintf("this server cannot reach a quorum of the cluster's etcd members, so it refuses requests that need one; retry on another server: %v", err))
	})
}

func needsQuorum(r *http.Request) bool {
	p := r.URL.Path
	if p != "/api" && p != "/apis" && !strings.HasPrefix(p, "/api/") && !strings.HasPrefix(p, "/apis/") {
		return false
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		q := r.URL.Query()
		if q.Get("watch") == "true" || q.Get("watch") == "1" || strings.Contains(p, "/watch/") {
			return false
		}
		// Discovery (/api/VERSION, /apis/GROUP/VERSION) needs no etcd.
		parts := strings.Split(strings.Trim(p, "/"), "/")
		if parts[0] == "api" && len(parts) <= 2 || parts[0] == "apis" && len(parts) <= 3 {
			return false
		}
		return q.Get("resourceVersion") == ""
	default:
		return true
	}
}

// writeStatus writes a Kubernetes Status, as the API's own errors are.
func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	st := metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Message: msg, Reason: reason, Code: int32(code),
		Details: &metav1.StatusDetails{RetryAfterSeconds: 1},
	}
	data, _ := json.Marshal(st)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(data)
}

// prepareQuorum makes the quorum monitor and puts its filter in front of
// the API; installCluster adds its readyz check and starts it.
func (s *Server) prepareQuorum(config *genericapiserver.Config) error {
	c, err := clientv3.New(clientv3.Config{Endpoints: s.etcdServers, DialTimeout: 10 * time.Second})
	if err != nil {
		return fmt.Errorf("connecting to etcd for the quorum monitor: %w", err)
	}
	s.quorum = newQuorumMonitor(c, s.etcd)
	chain := config.BuildHandlerChainFunc
	config.BuildHandlerChainFunc = func(h http.Handler, c *genericapiserver.Config) http.Handler {
		return chain(s.quorum.filter(h), c)
	}
	return nil
}

// installCluster serves the join endpoints and the quorum's readyz check,
// and runs the quorum monitor while the server runs.
func (s *Server) installCluster() error {
	s.installJoin()
	if err := s.generic.AddReadyzChecks(s.quorum.check()); err != nil {
		return err
	}
	return s.generic.AddPostStartHook("duet-etcd-quorum", func(ctx genericapiserver.PostStartHookContext) error {
		go func() {
			defer s.quorum.client.Close()
			s.quorum.Run(ctx)
		}()
		return nil
	})
}
