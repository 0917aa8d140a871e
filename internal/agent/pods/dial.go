package pods

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/duet-net/duet/internal/agent/streaming"
	"github.com/duet-net/duet/internal/netns"
)

// DialPod implements streaming.PodDialer: it connects to port at the
// pod's primary address (the node's, for a hostNetwork pod) from the
// node's network namespace, where kube-apiserver's proxy would reach it.
func (m *Manager) DialPod(ctx context.Context, ref streaming.PodRef, port int32) (net.Conn, error) {
	run, err := m.findPod(ref)
	if err != nil {
		return nil, err
	}
	if run.sandbox == nil || len(run.sandbox.Addrs) == 0 {
		return nil, streaming.BadRequest("pod %s has no address yet", ref)
	}
	addr := net.JoinHostPort(run.sandbox.Addrs[0].Addr().String(), strconv.Itoa(int(port)))
	var conn net.Conn
	dial := func() (err error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		conn, err = d.DialContext(ctx, "tcp", addr)
		return err
	}
	if m.NodeNS == "" {
		err = dial()
	} else {
		err = netns.Do(m.NodeNS, dial)
	}
	if err != nil {
		return nil, fmt.Errorf("connecting to pod %s at %s: %w", ref, addr, err)
	}
	return conn, nil
}
