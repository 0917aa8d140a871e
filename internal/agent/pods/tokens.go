package pods

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/agent/podroot"
	"github.com/duet-net/duet/internal/agent/tokens"
)

// tokenRetry is the least time between two refreshes of a pod's tokens:
// how soon a failed one is tried again, and how late a due one may be
// (well within the fifth of a token's lifetime, at least two minutes,
// left when it is due).
const tokenRetry = 10 * time.Second

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

// tokenVolumes are the pod's projected volumes that hold a token.
func tokenVolumes(pod *corev1.Pod) []corev1.Volume {
	var out []corev1.Volume
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, src := range v.Projected.Sources {
			if src.ServiceAccountToken != nil {
				out = append(out, v)
				break
			}
		}
	}
	return out
}

func hasTokenVolumes(pod *corev1.Pod) bool { return len(tokenVolumes(pod)) > 0 }

// refreshTokens rewrites the pod's volumes that hold tokens whenever one
// of their tokens is due for replacement (80% of its lifetime), until ctx
// ends with the pod. The volume's other sources are written again with
// it, from their current content.
func (m *Manager) refreshTokens(ctx context.Context, pod *corev1.Pod, run *podRun) {
	defer m.tokens().Forget(pod.UID) // a refresh racing the pod's stop
	clk := m.clock()
	for {
		wait := tokenRetry
		if at, ok := m.tokens().NextRefresh(pod.UID); ok {
			wait = max(at.Sub(clk.Now()), tokenRetry)
		}
		select {
		case <-ctx.Done():
			return
		case <-clk.After(wait):
		}
		if err := m.rewriteTokenVolumes(ctx, pod, run); err != nil && ctx.Err() == nil {
			m.Log.Warn("refreshing ServiceAccount tokens", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		}
	}
}

func (m *Manager) rewriteTokenVolumes(ctx context.Context, pod *corev1.Pod, run *podRun) error {
	addrs := run.addrs()
	info := podroot.PodInfo{Pod: pod, PodIPs: addrs, HostIPs: m.HostIPs}
	var vols []podroot.Volume
	for _, v := range tokenVolumes(pod) {
		vol, err := m.volume(ctx, pod, info, v)
		if err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
		vols = append(vols, vol)
	}
	return run.world.Update(vols)
}
