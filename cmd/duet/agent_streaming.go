package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/rest"

	"github.com/duet-net/duet/internal/agent"
	"github.com/duet-net/duet/internal/agent/crilog"
	"github.com/duet-net/duet/internal/agent/streaming"
)

// streamingFlags are the agent's flags for exec, attach, port-forward and
// container logs.
type streamingFlags struct {
	bindAddress, advertiseAddress string
	certFile, keyFile, clientCA   string
	logMaxSize                    string
	logMaxFiles                   int
}

func (f *streamingFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.bindAddress, "streaming-bind-address", "0.0.0.0:10250", "host:port where the agent serves exec, attach, port-forward and container logs to the API server (HTTPS; needs --tls-cert-file)")
	fs.StringVar(&f.advertiseAddress, "streaming-advertise-address", "", "the IP the API server dials for them, published in the Node's duet.dev/agent-address annotation (default: the bind address's host if it is one, else the node's first InternalIP)")
	fs.StringVar(&f.certFile, "tls-cert-file", "", "the agent's serving certificate, signed by the cluster CA for the address the API server dials; without it the agent serves no exec, attach, port-forward or logs")
	fs.StringVar(&f.keyFile, "tls-private-key-file", "", "the key of --tls-cert-file")
	fs.StringVar(&f.clientCA, "client-ca-file", "", "CA that signs the API server's client certificate (default: the CA of --kubeconfig)")
	fs.StringVar(&f.logMaxSize, "container-log-max-size", "10Mi", "size at which a container's log file is rotated")
	fs.IntVar(&f.logMaxFiles, "container-log-max-files", crilog.DefaultMaxFiles, "log files kept per container instance, the current one included")
}

func (f *streamingFlags) apply(cfg *agent.Config, kube *rest.Config, log *slog.Logger) error {
	size, err := resource.ParseQuantity(f.logMaxSize)
	if err != nil || size.Value() < 1024 {
		return fmt.Errorf("--container-log-max-size %q: want a size of at least 1Ki, such as 10Mi", f.logMaxSize)
	}
	if f.logMaxFiles < 1 {
		return fmt.Errorf("--container-log-max-files %d: must be at least 1", f.logMaxFiles)
	}
	cfg.ContainerLogs = crilog.Options{MaxSize: size.Value(), MaxFiles: f.logMaxFiles}
	if (f.certFile == "") != (f.keyFile == "") {
		return errors.New("--tls-cert-file and --tls-private-key-file go together")
	}
	if f.certFile == "" {
		log.Warn("no --tls-cert-file: this node serves no exec, attach, port-forward or logs")
		return nil
	}
	host, _, err := net.SplitHostPort(f.bindAddress)
	if err != nil {
		return fmt.Errorf("--streaming-bind-address %q: %w", f.bindAddress, err)
	}
	caPEM := kube.CAData
	caFile := f.clientCA
	if caFile == "" {
		caFile = kube.CAFile
	}
	if caFile != "" {
		if caPEM, err = os.ReadFile(caFile); err != nil {
			return fmt.Errorf("--client-ca-file: %w", err)
		}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("no client CA: give --client-ca-file, or a kubeconfig with the cluster's CA")
	}
	advertise := f.advertiseAddress
	if advertise == "" {
		if ip, err := netip.ParseAddr(host); err == nil && !ip.IsUnspecified() {
			advertise = ip.String()
		}
	} else if _, err := netip.ParseAddr(advertise); err != nil {
		return fmt.Errorf("--streaming-advertise-address %q: not an IP address", advertise)
	}
	cfg.Streaming = &streaming.Config{Addr: f.bindAddress, CertFile: f.certFile, KeyFile: f.keyFile, ClientCAs: pool, Log: log.With("component", "streaming")}
	cfg.StreamingAddress = advertise
	return nil
}
