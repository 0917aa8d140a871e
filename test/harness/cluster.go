package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// JoinFlags are the flags that make a server join the cluster of the
// running servers given: --join with their URLs and --token-file with the
// first one's join token.
func JoinFlags(servers ...*Server) []string {
	var urls string
	for i, s := range servers {
		if i > 0 {
			urls += ","
		}
		urls += s.Config.Host
	}
	return []string{"--join", urls, "--token-file", filepath.Join(servers[0].DataDir, "join-token")}
}

// EtcdClient connects to the embedded etcd member of a running server,
// found through DATA_DIR/etcd/ports.json; it is closed when the test ends.
func (s *Server) EtcdClient(t testing.TB) *clientv3.Client {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(s.DataDir, "etcd", "ports.json"))
	if err != nil {
		t.Fatalf("the server's etcd ports: %v", err)
	}
	var ports struct{ Client int }
	if err := json.Unmarshal(data, &ports); err != nil || ports.Client == 0 {
		t.Fatalf("the server's etcd ports (%s): %v", data, err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{fmt.Sprintf("http://127.0.0.1:%d", ports.Client)}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// EtcdMembers lists the names of the etcd cluster's members as the
// server's member knows them (serializable: it answers without a quorum).
func (s *Server) EtcdMembers(ctx context.Context, c *clientv3.Client) ([]string, error) {
	resp, err := c.MemberList(ctx, clientv3.WithSerializable())
	if err != nil {
		return nil, err
	}
	var names []string
	for _, m := range resp.Members {
		name := m.Name
		if m.IsLearner {
			name += " (learner)"
		}
		names = append(names, name)
	}
	return names, nil
}
