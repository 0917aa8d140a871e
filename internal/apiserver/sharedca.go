package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

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
	certPEM, keyPEM, err := ca.PEM()
	if err != nil {
		return nil, err
	}
	mine, err := json.Marshal(caRecord{Cert: certPEM, Key: keyPEM})
	if err != nil {
		return nil, err
	}
	stored, err := firstRecord(ctx, endpoints, caKey, "cluster CA", mine)
	if err != nil {
		return nil, err
	}
	var theirs caRecord
	if err := json.Unmarshal(stored, &theirs); err != nil {
		return nil, fmt.Errorf("reading the cluster CA from etcd: %w", err)
	}
	if bytes.Equal(theirs.Cert, certPEM) {
		return ca, nil
	}
	return pki.InstallCA(dir, theirs.Cert, theirs.Key)
}
