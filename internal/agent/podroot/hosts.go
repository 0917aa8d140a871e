package podroot

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// DefaultClusterDomain is the cluster's DNS domain unless the agent is told
// another.
const DefaultClusterDomain = "cluster.local"

// maxHostnameLen is the kernel's limit on a UTS hostname (64 bytes with the
// terminating NUL).
const maxHostnameLen = 63

// Names are the names a pod's world gives itself.
type Names struct {
	// Hostname is the UTS hostname, as `hostname` prints it.
	Hostname string
	// Short is the pod's host name (spec.hostname, or the pod's name), the
	// last name on its /etc/hosts lines.
	Short string
	// Domain is subdomain.namespace.svc.clusterDomain when the pod has a
	// subdomain, else empty: Short.Domain is then its FQDN.
	Domain string
}

// PodNames works out a pod's host names as Kubernetes does: spec.hostname,
// else the pod's name, cut to 63 characters without a trailing '-' or '.';
// spec.hostnameOverride instead, if set, with no domain; a domain from
// spec.subdomain; the FQDN as the kernel hostname with
// spec.setHostnameAsFQDN; and the node's name for a hostNetwork pod.
func PodNames(s *Spec) (Names, error) {
	if s.HostNetwork {
		if s.NodeName == "" {
			return Names{}, fmt.Errorf("nodeName: required for a hostNetwork pod (its hostname)")
		}
		return Names{Hostname: s.NodeName, Short: s.NodeName}, nil
	}
	if s.HostnameOverride != "" {
		if msgs := validation.IsDNS1123Subdomain(s.HostnameOverride); len(msgs) > 0 {
			return Names{}, fmt.Errorf("spec.hostnameOverride %q: %s", s.HostnameOverride, strings.Join(msgs, "; "))
		}
		h, err := truncateHostname(s.HostnameOverride)
		return Names{Hostname: h, Short: h}, err
	}
	short := s.Name
	if s.Hostname != "" {
		if msgs := validation.IsDNS1123Label(s.Hostname); len(msgs) > 0 {
			return Names{}, fmt.Errorf("spec.hostname %q: %s", s.Hostname, strings.Join(msgs, "; "))
		}
		short = s.Hostname
	}
	short, err := truncateHostname(short)
	if err != nil {
		return Names{}, err
	}
	n := Names{Hostname: short, Short: short}
	if s.Subdomain != "" {
		if msgs := validation.IsDNS1123Label(s.Subdomain); len(msgs) > 0 {
			return Names{}, fmt.Errorf("spec.subdomain %q: %s", s.Subdomain, strings.Join(msgs, "; "))
		}
		n.Domain = s.Subdomain + "." + s.Namespace + ".svc." + clusterDomain(s)
	}
	if s.SetHostnameAsFQDN && n.Domain != "" {
		n.Hostname = n.Short + "." + n.Domain
		if len(n.Hostname) > maxHostnameLen {
			return Names{}, fmt.Errorf("spec.setHostnameAsFQDN: the FQDN %q is longer than %d characters", n.Hostname, maxHostnameLen)
		}
	}
	return n, nil
}

func truncateHostname(h string) (string, error) {
	if len(h) <= maxHostnameLen {
		return h, nil
	}
	t := strings.TrimRight(h[:maxHostnameLen], "-.")
	if t == "" {
		return "", fmt.Errorf("hostname %q: nothing left after cutting it to %d characters", h, maxHostnameLen)
	}
	return t, nil
}

func clusterDomain(s *Spec) string {
	if s.ClusterDomain != "" {
		return s.ClusterDomain
	}
	return DefaultClusterDomain
}

// Headers of the hosts files, as Kubernetes writes them, so that tools that
// look for them (and people) know who manages the file.
const (
	hostsHeader            = "# Kubernetes-managed hosts file.\n"
	hostsHeaderHostNetwork = "# Kubernetes-managed hosts file (host network).\n"
)

// RenderHosts is a pod's /etc/hosts: localhost for both families, the
// usual IPv6 names, a line per pod address (every family) naming the pod,
// FQDN first when it has a domain, then the host aliases.
func RenderHosts(n Names, addrs []netip.Addr, aliases []corev1.HostAlias) []byte {
	var b bytes.Buffer
	b.WriteString(hostsHeader)
	b.WriteString("127.0.0.1\tlocalhost\n")
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	b.WriteString("fe00::0\tip6-localnet\n")
	b.WriteString("fe00::0\tip6-mcastprefix\n")
	b.WriteString("fe00::1\tip6-allnodes\n")
	b.WriteString("fe00::2\tip6-allrouters\n")
	for _, a := range addrs {
		if n.Domain != "" {
			fmt.Fprintf(&b, "%s\t%s.%s\t%s\n", a, n.Short, n.Domain, n.Short)
		} else {
			fmt.Fprintf(&b, "%s\t%s\n", a, n.Short)
		}
	}
	writeAliases(&b, aliases)
	return b.Bytes()
}

// RenderHostNetworkHosts is a hostNetwork pod's /etc/hosts: the node's own,
// then the host aliases.
func RenderHostNetworkHosts(nodeHosts []byte, aliases []corev1.HostAlias) []byte {
	var b bytes.Buffer
	b.WriteString(hostsHeaderHostNetwork)
	b.Write(nodeHosts)
	if len(nodeHosts) > 0 && nodeHosts[len(nodeHosts)-1] != '\n' && len(aliases) > 0 {
		b.WriteByte('\n')
	}
	writeAliases(&b, aliases)
	return b.Bytes()
}

func writeAliases(b *bytes.Buffer, aliases []corev1.HostAlias) {
	if len(aliases) == 0 {
		return
	}
	b.WriteString("\n# Entries added by HostAliases.\n")
	for _, a := range aliases {
		fmt.Fprintf(b, "%s\t%s\n", a.IP, strings.Join(a.Hostnames, "\t"))
	}
}

// validAliases checks what would break the hosts file's format: the API
// validates host aliases, but the agent may be handed anything.
func validAliases(aliases []corev1.HostAlias) error {
	for i, a := range aliases {
		if _, err := netip.ParseAddr(a.IP); err != nil {
			return fmt.Errorf("spec.hostAliases[%d].ip: %q is not an IP address", i, a.IP)
		}
		for j, h := range a.Hostnames {
			if msgs := validation.IsDNS1123Subdomain(h); len(msgs) > 0 {
				return fmt.Errorf("spec.hostAliases[%d].hostnames[%d] %q: %s", i, j, h, strings.Join(msgs, "; "))
			}
		}
	}
	return nil
}
