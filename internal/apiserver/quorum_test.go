package apiserver

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestQuorumFilter(t *testing.T) {
	lost := &quorumMonitor{}
	lost.state.Store(&quorumState{ok: false, reason: "etcd member m1 has no leader", since: time.Unix(0, 0)})
	held := &quorumMonitor{}
	held.state.Store(&quorumState{ok: true})
	for _, tc := range []struct {
		name       string
		m          *quorumMonitor
		method     string
		url        string
		wantCode   int
		wantInBody string
	}{
		{"write, quorum held", held, "POST", "/api/v1/namespaces/default/services", 200, "next"},
		{"write, quorum lost", lost, "POST", "/api/v1/namespaces/default/services", 503, "cannot reach a quorum"},
		{"delete, quorum lost", lost, "DELETE", "/api/v1/namespaces/default/services/a", 503, "retry on another server"},
		{"current list, quorum lost", lost, "GET", "/api/v1/services", 503, "quorum"},
		{"list at a resourceVersion, quorum lost", lost, "GET", "/api/v1/services?resourceVersion=0", 200, "next"},
		{"watch, quorum lost", lost, "GET", "/api/v1/services?watch=true", 200, "next"},
		{"discovery, quorum lost", lost, "GET", "/apis/apps/v1", 200, "next"},
		{"readyz, quorum lost: at once", lost, "GET", "/readyz", 503, "[-]etcd-quorum failed: etcd member m1 has no leader"},
		{"readyz, quorum held: the checks", held, "GET", "/readyz", 200, "next"},
		{"livez, quorum lost", lost, "GET", "/livez", 200, "next"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.m.filter(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("next")) }))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.url, nil))
			if rec.Code != tc.wantCode || !strings.Contains(rec.Body.String(), tc.wantInBody) {
				t.Errorf("%s %s: %d %q, want %d with %q", tc.method, tc.url, rec.Code, rec.Body.String(), tc.wantCode, tc.wantInBody)
			}
		})
	}
}
