package apiserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const serviceAccountKeyKey = "/duet/pki/service-account-key"

// sharedServiceAccountKey returns the key that signs ServiceAccount
// tokens, one for every replica on the etcd (a token any replica issued is
// accepted by all): the first server records a new key, the others and
// every restart read it back.
func sharedServiceAccountKey(ctx context.Context, endpoints []string) (*ecdsa.PrivateKey, error) {
	client, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 10 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd: %w", err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the service-account key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	mine := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	resp, err := client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(serviceAccountKeyKey), "=", 0)).
		Then(clientv3.OpPut(serviceAccountKeyKey, string(mine))).
		Else(clientv3.OpGet(serviceAccountKeyKey)).
		Commit()
	if err != nil {
		return nil, fmt.Errorf("recording the service-account key in etcd: %w", err)
	}
	if resp.Succeeded {
		return key, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, fmt.Errorf("reading the service-account key from etcd: %s vanished", serviceAccountKeyKey)
	}
	block, _ := pem.Decode(kvs[0].Value)
	if block == nil {
		return nil, errors.New("reading the service-account key from etcd: not PEM")
	}
	stored, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("reading the service-account key from etcd: %w", err)
	}
	return stored, nil
}
