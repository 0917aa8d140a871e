// Package pki makes the control plane's credentials: a CA kept in the
// data directory, the API server's serving certificate, client
// certificates (the admin's, later each node's), and kubeconfig files.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const validity = 10 * 365 * 24 * time.Hour

// CA is a certificate authority whose files live in a directory.
type CA struct {
	Cert     *x509.Certificate
	Key      crypto.Signer
	CertFile string
}

// LoadOrCreateCA reads ca.crt and ca.key from dir, creating them the first
// time, so that a restarted server keeps trusting the credentials it issued.
func LoadOrCreateCA(dir, name string) (*CA, error) {
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	cert, key, err := loadPair(certFile, keyFile)
	if err == nil {
		return &CA{Cert: cert, Key: key, CertFile: certFile}, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("loading CA from %s: %w", dir, err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	key = ecKey
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating CA: %w", err)
	}
	cert, _ = x509.ParseCertificate(der)
	if err := writePair(certFile, keyFile, der, ecKey); err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertFile: certFile}, nil
}

// Pair is a certificate and its key, encoded as PEM.
type Pair struct {
	CertPEM, KeyPEM []byte
}

// Issue signs a leaf certificate: a server certificate when hosts are
// given (IPs and DNS names), a client certificate for the user and groups
// otherwise.
func (ca *CA) Issue(commonName string, groups []string, hosts []string, server bool) (Pair, error) {
	if !server {
		return ca.sign(pkix.Name{CommonName: commonName, Organization: groups}, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, "certificate")
	}
	return ca.sign(pkix.Name{CommonName: commonName, Organization: groups}, hosts, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, "certificate")
}

// sign issues a leaf certificate with a new P-256 key for subject, valid
// for hosts (IPs and DNS names) and the given uses; what names it in errors.
func (ca *CA) sign(subject pkix.Name, hosts []string, usages []x509.ExtKeyUsage, what string) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  usages,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return Pair{}, fmt.Errorf("issuing %s for %s: %w", what, subject.CommonName, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Pair{}, err
	}
	return Pair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// WriteFiles writes the pair to certFile and keyFile (key readable by the
// owner only).
func (p Pair) WriteFiles(certFile, keyFile string) error {
	if err := writeAtomic(certFile, p.CertPEM, 0o644); err != nil {
		return err
	}
	return writeAtomic(keyFile, p.KeyPEM, 0o600)
}

// WriteKubeconfig writes a kubeconfig for server with a client certificate.
func WriteKubeconfig(path, server, caFile, clusterName, user string, client Pair) error {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[clusterName] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: client.CertPEM, ClientKeyData: client.KeyPEM}
	cfg.Contexts[clusterName] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = clusterName
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	return writeAtomic(path, data, 0o600)
}

// NodeUserPrefix begins the user name of a node agent's client
// certificate, system:node:NAME in the group system:nodes, the identity
// Kubernetes' Node authorizer and NodeRestriction admission recognise.
const NodeUserPrefix = "system:node:"

// WriteNodeKubeconfig writes to path a kubeconfig for node name's agent:
// a client certificate for system:node:NAME signed by the cluster CA in
// dataDir/pki, for the server that dataDir/admin.kubeconfig points at
// (both written by `duet server --data-dir dataDir`).
func WriteNodeKubeconfig(dataDir, name, path string) error {
	admin, err := clientcmd.LoadFromFile(filepath.Join(dataDir, "admin.kubeconfig"))
	if err != nil {
		return fmt.Errorf("reading the admin kubeconfig: %w", err)
	}
	current, ok := admin.Contexts[admin.CurrentContext]
	if !ok {
		return fmt.Errorf("the admin kubeconfig in %s has no current context", dataDir)
	}
	cluster, ok := admin.Clusters[current.Cluster]
	if !ok {
		return fmt.Errorf("the admin kubeconfig in %s names no cluster", dataDir)
	}
	ca, err := LoadOrCreateCA(filepath.Join(dataDir, "pki"), "duet-ca")
	if err != nil {
		return err
	}
	cred, err := ca.Issue(NodeUserPrefix+name, []string{user.NodesGroup}, nil, false)
	if err != nil {
		return err
	}
	return WriteKubeconfig(path, cluster.Server, ca.CertFile, "duet", NodeUserPrefix+name, cred)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

func loadPair(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("%s or %s is not PEM", certFile, keyFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func writePair(certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return Pair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}.WriteFiles(certFile, keyFile)
}

// writeAtomic writes through a temporary file and a rename, so a crash
// never leaves a half-written credential behind.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// PEM returns the CA's certificate and key files' contents.
func (ca *CA) PEM() (certPEM, keyPEM []byte, err error) {
	certPEM, err = os.ReadFile(ca.CertFile)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = os.ReadFile(filepath.Join(filepath.Dir(ca.CertFile), "ca.key"))
	return certPEM, keyPEM, err
}

// InstallCA replaces the CA in dir with the given one (a replica adopting
// the CA its peers share) and loads it.
func InstallCA(dir string, certPEM, keyPEM []byte) (*CA, error) {
	if err := (Pair{CertPEM: certPEM, KeyPEM: keyPEM}).WriteFiles(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")); err != nil {
		return nil, err
	}
	return LoadOrCreateCA(dir, "")
}
