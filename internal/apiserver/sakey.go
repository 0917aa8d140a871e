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
)

const serviceAccountKeyKey = "/duet/pki/service-account-key"

// sharedServiceAccountKey returns the key that signs ServiceAccount
// tokens, one for every replica on the etcd (a token any replica issued is
// accepted by all): the first server records a new key, the others and
// every restart read it back.
func sharedServiceAccountKey(ctx context.Context, endpoints []string) (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the service-account key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	mine := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	stored, err := firstRecord(ctx, endpoints, serviceAccountKeyKey, "service-account key", mine)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(stored)
	if block == nil {
		return nil, errors.New("reading the service-account key from etcd: not PEM")
	}
	key, err = x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("reading the service-account key from etcd: %w", err)
	}
	return key, nil
}
