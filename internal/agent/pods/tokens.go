package pods

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/agent/podroot"
	"github.com/duet-net/duet/internal/agent/tokens"
)

func (m *Manager) tokens() *tokens.Manager {
	m.tokensOnce.Do(func() {
		if m.Tokens == nil {
			m.Tokens = &tokens.Manager{Client: m.Client, Clock: m.clock()}
		}
	})
	return m.Tokens
}

// tokenFiles is a serviceAccountToken projection's file, with a token
// bound to the pod.
func (m *Manager) tokenFiles(ctx context.Context, pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection, mode *int32) (map[string]podroot.File, error) {
	tr, err := m.tokens().Get(ctx, pod, src)
	if err != nil {
		return nil, fmt.Errorf("serviceAccountToken: %w", err)
	}
	return podroot.TokenFiles(pod, src.Path, tr.Status.Token, mode)
}
