package tokens

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
)

// tokenServer answers TokenRequests as the API server does, on a fake
// clock: token N, expiring after the seconds asked for. fail makes it
// refuse.
type tokenServer struct {
	clk  *testingclock.FakeClock
	mu   sync.Mutex
	reqs []*authenticationv1.TokenRequest
	fail bool
}

func (s *tokenServer) react(a k8stesting.Action) (bool, runtime.Object, error) {
	ca, ok := a.(k8stesting.CreateAction)
	if !ok || a.GetSubresource() != "token" {
		return false, nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return true, nil, errors.New("connection refused")
	}
	req := ca.GetObject().(*authenticationv1.TokenRequest).DeepCopy()
	s.reqs = append(s.reqs, req)
	out := req.DeepCopy()
	out.Status.Token = fmt.Sprintf("token-%d", len(s.reqs))
	out.Status.ExpirationTimestamp = metav1.NewTime(s.clk.Now().Add(time.Duration(*req.Spec.ExpirationSeconds) * time.Second))
	return true, out, nil
}

func (s *tokenServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reqs)
}

func setup() (*Manager, *tokenServer, *testingclock.FakeClock) {
	clk := testingclock.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	srv := &tokenServer{clk: clk}
	client := fake.NewClientset()
	client.PrependReactor("create", "serviceaccounts", srv.react)
	return &Manager{Client: client, Clock: clk}, srv, clk
}

var testPod = &corev1.Pod{
	ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web", UID: "uid-web"},
	Spec:       corev1.PodSpec{ServiceAccountName: "builder"},
}

func TestTokenIsBoundToThePod(t *testing.T) {
	m, srv, _ := setup()
	tr, err := m.Get(context.Background(), testPod, &corev1.ServiceAccountTokenProjection{Path: "token", Audience: "vault", ExpirationSeconds: ptr.To[int64](600)})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Status.Token != "token-1" {
		t.Errorf("token %q", tr.Status.Token)
	}
	req := srv.reqs[0]
	ref := req.Spec.BoundObjectRef
	if ref == nil || ref.Kind != "Pod" || ref.APIVersion != "v1" || ref.Name != "web" || ref.UID != "uid-web" {
		t.Errorf("boundObjectRef %+v, want the pod with its UID", ref)
	}
	if len(req.Spec.Audiences) != 1 || req.Spec.Audiences[0] != "vault" || *req.Spec.ExpirationSeconds != 600 {
		t.Errorf("spec %+v", req.Spec)
	}

	// Without an audience the API server's own applies: none is sent.
	// Without a lifetime, an hour.
	if _, err := m.Get(context.Background(), testPod, &corev1.ServiceAccountTokenProjection{Path: "token"}); err != nil {
		t.Fatal(err)
	}
	if req := srv.reqs[1]; len(req.Spec.Audiences) != 0 || *req.Spec.ExpirationSeconds != DefaultExpirationSeconds {
		t.Errorf("defaults: spec %+v", req.Spec)
	}

	noSA := testPod.DeepCopy()
	noSA.Spec.ServiceAccountName = ""
	if _, err := m.Get(context.Background(), noSA, &corev1.ServiceAccountTokenProjection{Path: "token"}); err == nil || !strings.Contains(err.Error(), "ServiceAccount") {
		t.Errorf("a pod without a ServiceAccount: err = %v", err)
	}
}

// A token is reused until 80% of its lifetime has passed, or until it is a
// day old.
func TestRefresh(t *testing.T) {
	for _, tc := range []struct {
		name    string
		seconds int64
		refresh time.Duration // after issue
	}{
		{"an hour: at 48 minutes", 3600, 48 * time.Minute},
		{"kube-api-access's 3607 s: at 80%", 3607, 3607 * time.Second * 4 / 5},
		{"ten minutes: at 8", 600, 8 * time.Minute},
		{"two days: after one", 48 * 3600, 24 * time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, srv, clk := setup()
			src := &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To(tc.seconds)}
			issued := clk.Now()
			if _, err := m.Get(context.Background(), testPod, src); err != nil {
				t.Fatal(err)
			}
			at, ok := m.NextRefresh(testPod.UID)
			if !ok || !at.Equal(issued.Add(tc.refresh)) {
				t.Fatalf("NextRefresh = %v, %v; want %v", at, ok, issued.Add(tc.refresh))
			}
			clk.SetTime(issued.Add(tc.refresh - time.Second))
			if tr, err := m.Get(context.Background(), testPod, src); err != nil || tr.Status.Token != "token-1" || srv.count() != 1 {
				t.Fatalf("before the refresh time: %v, %v, %d requests", tr.Status.Token, err, srv.count())
			}
			clk.SetTime(issued.Add(tc.refresh))
			if tr, err := m.Get(context.Background(), testPod, src); err != nil || tr.Status.Token != "token-2" {
				t.Fatalf("at the refresh time: %v, %v", tr, err)
			}
			if at, _ := m.NextRefresh(testPod.UID); !at.Equal(issued.Add(2 * tc.refresh)) {
				t.Errorf("NextRefresh after the refresh = %v, want %v", at, issued.Add(2*tc.refresh))
			}
		})
	}
}

// While the API server cannot be reached, a token that has not expired is
// still handed out; an expired one is not.
func TestServerDown(t *testing.T) {
	m, srv, clk := setup()
	src := &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To[int64](600)}
	issued := clk.Now()
	if _, err := m.Get(context.Background(), testPod, src); err != nil {
		t.Fatal(err)
	}
	srv.fail = true
	clk.SetTime(issued.Add(9 * time.Minute))
	if tr, err := m.Get(context.Background(), testPod, src); err != nil || tr.Status.Token != "token-1" {
		t.Errorf("refresh failed before expiry: %v, %v", tr, err)
	}
	clk.SetTime(issued.Add(10 * time.Minute))
	if _, err := m.Get(context.Background(), testPod, src); err == nil || !strings.Contains(err.Error(), "app/builder") {
		t.Errorf("refresh failed after expiry: err = %v, want one naming the ServiceAccount", err)
	}
}

func TestSharingAndForget(t *testing.T) {
	m, srv, _ := setup()
	ctx := context.Background()
	other := testPod.DeepCopy()
	other.Name, other.UID = "web-2", "uid-web-2"
	for _, p := range []*corev1.Pod{testPod, testPod, other} {
		for _, aud := range []string{"", "vault", ""} {
			if _, err := m.Get(ctx, p, &corev1.ServiceAccountTokenProjection{Path: "t", Audience: aud}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// One per pod and audience.
	if srv.count() != 4 {
		t.Errorf("%d requests, want 4", srv.count())
	}
	m.Forget(testPod.UID)
	if _, ok := m.NextRefresh(testPod.UID); ok {
		t.Error("the pod's tokens survived Forget")
	}
	if _, ok := m.NextRefresh(other.UID); !ok {
		t.Error("Forget took another pod's tokens")
	}
}

func TestMalformedAnswer(t *testing.T) {
	clk := testingclock.NewFakeClock(time.Now())
	client := fake.NewClientset()
	client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authenticationv1.TokenRequest{}, nil
	})
	m := &Manager{Client: client, Clock: clk}
	if _, err := m.Get(context.Background(), testPod, &corev1.ServiceAccountTokenProjection{Path: "t"}); err == nil || !strings.Contains(err.Error(), "no token") {
		t.Errorf("err = %v", err)
	}
}
