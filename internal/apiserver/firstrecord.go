package apiserver

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// firstRecord makes one value of key shared by every replica on the etcd
// and every restart: it records mine unless key exists, and returns what
// key holds afterwards (mine for the first writer, the recorded value for
// everyone else). what names the value in errors.
func firstRecord(ctx context.Context, endpoints []string, key, what string, mine []byte) ([]byte, error) {
	client, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 10 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd: %w", err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(mine))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return nil, fmt.Errorf("recording the %s in etcd: %w", what, err)
	}
	if resp.Succeeded {
		return mine, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, fmt.Errorf("reading the %s from etcd: %s vanished", what, key)
	}
	return kvs[0].Value, nil
}
