package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/duet-net/duet/internal/pki"
)

const caKey = "/duet/pki/ca"

type caRecord struct {
	Cert, Key []byte
}

// sharedCA makes every replica on one etcd use one CA, so credentials
// issued by any replica (the admin's, a node's) are accepted by all: the
// first replica to start records its CA in etcd if none is there, and the
// others adopt the recorded one.
func sharedCA(ctx context.Context, endpoints []string, dir string) (*pki.CA, error) {
	ca, err := pki.LoadOrCreateCA(dir, "duet-ca")
	if err != nil {
		return nil, err
	}
	client, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 10 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd: %w", err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	certPEM, keyPEM, err := ca.PEM()
	if err != nil {
		return nil, err
	}
	mine, err := json.Marshal(caRecord{Cert: certPEM, Key: keyPEM})
	if err != nil {
		return nil, err
	}
	resp, err := client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(caKey), "=", 0)).
		Then(clientv3.OpPut(caKey, string(mine))).
		Else(clientv3.OpGet(caKey)).
		Commit()
	if err != nil {
		return nil, fmt.Errorf("recording the cluster CA in etcd: %w", err)
	}
	if resp.Succeeded {
		return ca, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, fmt.Errorf("reading the cluster CA from etcd: %s vanished", caKey)
	}
	var theirs caRecord
	if err := json.Unmarshal(kvs[0].Value, &theirs); err != nil {
		return nil, fmt.Errorf("reading the cluster CA from etcd: %w", err)
	}
	if bytes.Equal(theirs.Cert, certPEM) {
		return ca, nil
	}
	return pki.InstallCA(dir, theirs.Cert, theirs.Key)
}
