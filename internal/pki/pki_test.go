package pki

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

// A node's kubeconfig is signed by the data directory's CA, names the
// node's identity, and points at the server of the admin kubeconfig.
func TestWriteNodeKubeconfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "pki"), 0o700); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadOrCreateCA(filepath.Join(dir, "pki"), "duet-ca")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := ca.Issue("duet-admin", []string{"system:masters"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	const server = "https://127.0.0.1:6443"
	if err := WriteKubeconfig(filepath.Join(dir, "admin.kubeconfig"), server, ca.CertFile, "duet", "duet-admin", admin); err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(dir, "node1.kubeconfig")
	if err := WriteNodeKubeconfig(dir, "node1", path); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.Clusters[ctx.Cluster] == nil || cfg.AuthInfos[ctx.AuthInfo] == nil {
		t.Fatalf("kubeconfig has no complete current context: %+v", cfg)
	}
	if got := cfg.Clusters[ctx.Cluster].Server; got != server {
		t.Errorf("server = %q, want the admin kubeconfig's %q", got, server)
	}
	block, _ := pem.Decode(cfg.AuthInfos[ctx.AuthInfo].ClientCertificateData)
	if block == nil {
		t.Fatal("no client certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "system:node:node1" || !slices.Equal(cert.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("certificate subject = %v, want CN=system:node:node1, O=system:nodes", cert.Subject)
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("certificate not signed by the data directory's CA: %v", err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig mode = %v (%v), want 0600", st.Mode().Perm(), err)
	}

	if err := WriteNodeKubeconfig(t.TempDir(), "node1", path); err == nil {
		t.Error("a data directory without an admin kubeconfig gave no error")
	}
}
