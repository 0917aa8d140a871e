package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
)

// IssuePeer signs the certificate of an etcd member for its peer traffic:
// mutual TLS, so it serves and it authenticates as a client, for the
// given hosts (IPs and DNS names).
func (ca *CA) IssuePeer(commonName string, hosts []string) (Pair, error) {
	return ca.sign(pkix.Name{CommonName: commonName}, hosts, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, "the etcd peer certificate")
}

// ChainPEM is the CA certificate as PEM, to append to a serving
// certificate so that clients pinning the CA by hash (a joining server)
// receive it.
func (ca *CA) ChainPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}
