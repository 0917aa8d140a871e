package apiserver

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"time"

	"k8s.io/apimachinery/pkg/util/sets"
	genericfilters "k8s.io/apiserver/pkg/server/filters"

	"github.com/duet-net/duet/internal/pki"
	registrycore "github.com/duet-net/duet/internal/registry/core"
)

// agentConnection is how the server reaches node agents for exec, attach,
// port-forward and logs: HTTPS to an agent whose serving certificate the
// cluster CA signed, with a client certificate of the identity agents
// serve (pki.AgentClientUser), issued afresh at each start.
func agentConnection(ca *pki.CA) (registrycore.AgentConnection, error) {
	pair, err := ca.AgentClient()
	if err != nil {
		return registrycore.AgentConnection{}, err
	}
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		return registrycore.AgentConnection{}, fmt.Errorf("the agent client certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	return registrycore.AgentConnection{Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 10,
		IdleConnTimeout:     90 * time.Second,
	}}, nil
}

// longRunning tells the API server which requests outlive its request
// timeout: watches and, as in kube-apiserver, the pods' streams (logs with
// follow included).
var longRunning = genericfilters.BasicLongRunningRequestCheck(
	sets.NewString("watch", "proxy"), sets.NewString("attach", "exec", "proxy", "log", "portforward"))
