package apiserver

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Member is one etcd member of a cluster of servers.
type Member struct {
	ID       uint64
	Name     string // "" while it has not started
	PeerURLs []string
	Learner  bool
	// Self marks the member of the server asked.
	Self bool
}

// memberClient connects to the embedded etcd of the running server in
// dataDir.
func memberClient(dataDir string, dial DialFunc) (*clientv3.Client, string, error) {
	endpoint, err := EtcdClientURL(dataDir)
	if err != nil {
		return nil, "", err
	}
	cfg := clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()}
	if dial != nil {
		cfg.DialOptions = []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		})}
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, "", err
	}
	return c, endpoint, nil
}

// ListMembers lists the etcd members of the cluster of the running server
// in dataDir, as its member knows them.
func ListMembers(ctx context.Context, dataDir string, dial DialFunc) ([]Member, error) {
	c, endpoint, err := memberClient(dataDir, dial)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx, endpoint)
	if err != nil {
		return nil, fmt.Errorf("asking the etcd of %s (is its server running?): %w", dataDir, err)
	}
	resp, err := c.MemberList(ctx, clientv3.WithSerializable())
	if err != nil {
		return nil, err
	}
	var out []Member
	for _, m := range resp.Members {
		out = append(out, Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, Learner: m.IsLearner, Self: m.ID == st.Header.MemberId})
	}
	return out, nil
}

// RemoveMember removes the member named name (or with that hex ID) from
// the cluster of the running server in dataDir: a server that is gone for
// good. A server removes itself with duet server --leave instead.
func RemoveMember(ctx context.Context, dataDir, name string, dial DialFunc) (Member, error) {
	members, err := ListMembers(ctx, dataDir, dial)
	if err != nil {
		return Member{}, err
	}
	var target *Member
	for i, m := range members {
		if m.Name == name || strconv.FormatUint(m.ID, 16) == name {
			target = &members[i]
		}
	}
	if target == nil {
		return Member{}, fmt.Errorf("no member %q in the cluster (duet member list shows them)", name)
	}
	if target.Self {
		return Member{}, fmt.Errorf("%s is the member of the server in %s itself: stop that server and run duet server --leave instead", name, dataDir)
	}
	c, _, err := memberClient(dataDir, dial)
	if err != nil {
		return Member{}, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := c.MemberRemove(ctx, target.ID); err != nil {
		return Member{}, fmt.Errorf("removing member %s: %w", name, err)
	}
	return *target, nil
}
