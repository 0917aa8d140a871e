// Package tokens keeps the ServiceAccount tokens an agent requested for
// its pods' serviceAccountToken projections, as the kubelet's token
// manager does: each token is requested through the TokenRequest API
// (serviceaccounts/token), bound to its pod, and reused until it reaches
// 80% of its lifetime (or a day of age), when the next Get requests a new
// one. A node identity is only given tokens bound to its own pods, so the
// binding is not optional.
package tokens

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
)

const (
	// DefaultExpirationSeconds is a projection's lifetime when it names
	// none (the API's default for serviceAccountToken projections).
	DefaultExpirationSeconds = 3600
	// maxAge is how old a token may get before it is replaced, however
	// long it lives.
	maxAge = 24 * time.Hour
)

// Manager requests and caches tokens. The zero value is not usable: set
// Client.
type Manager struct {
	Client kubernetes.Interface
	// Clock tells when tokens need replacing; nil is the real clock.
	Clock clock.PassiveClock

	mu    sync.Mutex
	cache map[key]*authenticationv1.TokenRequest
}

// key is what makes two projections share a token: the same pod,
// ServiceAccount, audience and lifetime.
type key struct {
	pod            types.UID
	namespace      string
	serviceAccount string
	audience       string
	seconds        int64
}

func (m *Manager) now() time.Time {
	if m.Clock == nil {
		return time.Now()
	}
	return m.Clock.Now()
}

// Get returns a token for the projection src of pod: the cached one while
// it is fresh, else a new one. When a new one cannot be had, a cached one
// that has not expired is still returned, as the kubelet does (the API
// server may be down for a while; the pod keeps its credentials).
func (m *Manager) Get(ctx context.Context, pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection) (*authenticationv1.TokenRequest, error) {
	if pod.Spec.ServiceAccountName == "" {
		return nil, errors.New("the pod names no ServiceAccount to request a token for")
	}
	seconds := int64(DefaultExpirationSeconds)
	if src.ExpirationSeconds != nil {
		seconds = *src.ExpirationSeconds
	}
	k := key{pod: pod.UID, namespace: pod.Namespace, serviceAccount: pod.Spec.ServiceAccountName, audience: src.Audience, seconds: seconds}
	now := m.now()
	m.mu.Lock()
	cached := m.cache[k]
	m.mu.Unlock()
	if cached != nil && now.Before(RefreshAt(cached)) {
		return cached, nil
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &seconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	tr, err := m.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, req, metav1.CreateOptions{})
	if err == nil {
		err = check(tr)
	}
	if err != nil {
		if cached != nil && now.Before(cached.Status.ExpirationTimestamp.Time) {
			return cached, nil
		}
		return nil, fmt.Errorf("requesting a token of ServiceAccount %s/%s for pod %s: %w", pod.Namespace, pod.Spec.ServiceAccountName, pod.Name, err)
	}
	m.mu.Lock()
	if m.cache == nil {
		m.cache = map[key]*authenticationv1.TokenRequest{}
	}
	m.cache[k] = tr
	m.mu.Unlock()
	return tr, nil
}

// check refuses an answer the cache could not schedule a refresh from.
func check(tr *authenticationv1.TokenRequest) error {
	switch {
	case tr == nil || tr.Status.Token == "":
		return errors.New("the API server returned no token")
	case tr.Status.ExpirationTimestamp.IsZero():
		return errors.New("the API server returned a token without an expiration time")
	case tr.Spec.ExpirationSeconds == nil || *tr.Spec.ExpirationSeconds <= 0:
		return errors.New("the API server returned a token without its lifetime")
	}
	return nil
}

// RefreshAt is when tr should be replaced: when 80% of its lifetime has
// passed, or when it is a day old, whichever comes first. Its lifetime is
// the one asked for (status.expirationTimestamp), not the longer one a
// token of a kube-api-access volume may actually have.
func RefreshAt(tr *authenticationv1.TokenRequest) time.Time {
	exp := tr.Status.ExpirationTimestamp.Time
	ttl := time.Duration(*tr.Spec.ExpirationSeconds) * time.Second
	issued := exp.Add(-ttl)
	at := exp.Add(-ttl / 5)
	if old := issued.Add(maxAge); old.Before(at) {
		return old
	}
	return at
}

// NextRefresh is the earliest time one of pod's cached tokens should be
// replaced; ok is false when it has none.
func (m *Manager) NextRefresh(pod types.UID) (at time.Time, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, tr := range m.cache {
		if k.pod != pod {
			continue
		}
		if r := RefreshAt(tr); !ok || r.Before(at) {
			at, ok = r, true
		}
	}
	return at, ok
}

// Forget drops pod's tokens (the pod stopped).
func (m *Manager) Forget(pod types.UID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.cache {
		if k.pod == pod {
			delete(m.cache, k)
		}
	}
}
