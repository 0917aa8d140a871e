package podroot

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Limits Kubernetes puts on a pod's resolver configuration.
const (
	maxNameservers     = 3
	maxSearches        = 32
	maxSearchLineChars = 2048
	maxSearchLen       = 253 // a longer search domain makes some resolvers abort
	maxResolvConfSize  = 200 << 10
)

// ResolvConf is a resolver configuration: what resolv.conf(5) holds and
// Kubernetes lets a pod set.
type ResolvConf struct {
	Nameservers []string
	Searches    []string
	// Options are "name" or "name:value", in order, one per name.
	Options []string
}

// ParseResolvConf reads the parts of resolv.conf(5) Kubernetes uses:
// nameserver lines add up; the last search line wins, without trailing
// dots and without "."; options lines add up, a later one of a name
// replacing the earlier. Comments start with '#' or ';'. It fails on a
// nameserver line without an address and on files over 200 KiB.
func ParseResolvConf(data []byte) (ResolvConf, error) {
	if len(data) > maxResolvConfSize {
		return ResolvConf{}, fmt.Errorf("resolv.conf is %d bytes, more than the %d a resolver configuration may have", len(data), maxResolvConfSize)
	}
	var c ResolvConf
	for i, line := range strings.Split(string(data), "\n") {
		if cut := strings.IndexAny(line, "#;"); cut >= 0 {
			line = line[:cut]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) < 2 {
				return ResolvConf{}, fmt.Errorf("resolv.conf line %d: nameserver without an address", i+1)
			}
			c.Nameservers = append(c.Nameservers, f[1])
		case "search", "domain":
			// A domain line is an old spelling of a one-domain search.
			c.Searches = nil
			for _, s := range f[1:] {
				if s = strings.TrimRight(s, "."); s != "" {
					c.Searches = append(c.Searches, s)
				}
			}
		case "options":
			c.Options = mergeOptions(c.Options, f[1:])
		}
	}
	return c, nil
}

// optionName is the name of "name:value" or "name".
func optionName(o string) string {
	name, _, _ := strings.Cut(o, ":")
	return name
}

// mergeOptions adds opts to have: an option of a name already there
// replaces it in place; new names go at the end.
func mergeOptions(have, opts []string) []string {
	out := append([]string(nil), have...)
	for _, o := range opts {
		if o == "" {
			continue
		}
		i := slices.IndexFunc(out, func(h string) bool { return optionName(h) == optionName(o) })
		if i >= 0 {
			out[i] = o
		} else {
			out = append(out, o)
		}
	}
	return out
}

// DNSInput is what a pod's resolver configuration is made from.
type DNSInput struct {
	Policy      corev1.DNSPolicy // "" is ClusterFirst
	Config      *corev1.PodDNSConfig
	HostNetwork bool
	Namespace   string
	// ClusterDomain defaults to cluster.local.
	ClusterDomain string
	// ClusterDNS are the kube-dns Service's cluster IPs, primary family
	// first; none makes ClusterFirst fall back to the host's resolvers, as
	// the kubelet does without --cluster-dns.
	ClusterDNS []netip.Addr
	// Host is the node's own resolver configuration.
	Host ResolvConf
}

// PodResolvConf works out a pod's resolver configuration as the kubelet
// does. ClusterFirst (a hostNetwork pod only with ClusterFirstWithHostNet):
// the cluster's DNS servers, the searches <ns>.svc.<domain> svc.<domain>
// <domain> and then the host's, options ndots:5. Default (and ClusterFirst
// for a hostNetwork pod, or without cluster DNS servers): the host's.
// None: nothing. Then dnsConfig is added: its nameservers and searches after
// those (duplicates dropped), its options replacing those of the same name.
// At most 3 nameservers and 32 searches of at most 2048 characters in all
// are kept, as the kubelet keeps them.
func PodResolvConf(in DNSInput) (ResolvConf, error) {
	var c ResolvConf
	policy := in.Policy
	if policy == "" {
		policy = corev1.DNSClusterFirst
	}
	switch policy {
	case corev1.DNSNone:
	case corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet:
		cluster := policy == corev1.DNSClusterFirstWithHostNet || !in.HostNetwork
		if cluster && len(in.ClusterDNS) > 0 {
			for _, a := range in.ClusterDNS {
				c.Nameservers = append(c.Nameservers, a.String())
			}
			domain := in.ClusterDomain
			if domain == "" {
				domain = DefaultClusterDomain
			}
			c.Searches = dedupe(append([]string{in.Namespace + ".svc." + domain, "svc." + domain, domain}, in.Host.Searches...))
			c.Options = []string{"ndots:5"}
			break
		}
		c = cloneConf(in.Host)
	case corev1.DNSDefault:
		c = cloneConf(in.Host)
	default:
		return ResolvConf{}, fmt.Errorf("spec.dnsPolicy: %q is not one of ClusterFirst, ClusterFirstWithHostNet, Default, None", policy)
	}
	if in.Config != nil {
		c.Nameservers = dedupe(append(c.Nameservers, in.Config.Nameservers...))
		c.Searches = dedupe(append(c.Searches, in.Config.Searches...))
		for i, o := range in.Config.Options {
			if o.Name == "" || strings.ContainsAny(o.Name, ": \t\n") {
				return ResolvConf{}, fmt.Errorf("spec.dnsConfig.options[%d].name: %q is not an option name", i, o.Name)
			}
			opt := o.Name
			if o.Value != nil && *o.Value != "" {
				opt += ":" + *o.Value
			}
			c.Options = mergeOptions(c.Options, []string{opt})
		}
	}
	if policy == corev1.DNSNone && len(c.Nameservers) == 0 {
		return ResolvConf{}, fmt.Errorf("spec.dnsConfig.nameservers: dnsPolicy None needs at least one")
	}
	for _, list := range [][]string{c.Nameservers, c.Searches, c.Options} {
		for _, s := range list {
			if s == "" || strings.ContainsAny(s, " \t\n\r#;") {
				return ResolvConf{}, fmt.Errorf("resolver configuration: %q cannot be written to resolv.conf", s)
			}
		}
	}
	c.Nameservers = c.Nameservers[:min(len(c.Nameservers), maxNameservers)]
	c.Searches = fitSearches(c.Searches)
	return c, nil
}

func cloneConf(c ResolvConf) ResolvConf {
	return ResolvConf{
		Nameservers: append([]string(nil), c.Nameservers...),
		Searches:    append([]string(nil), c.Searches...),
		Options:     append([]string(nil), c.Options...),
	}
}

func dedupe(ss []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// fitSearches keeps the searches within Kubernetes' limits: the first 32,
// none longer than 253 characters, and no more than fit a 2048-character
// line (dropped from the end).
func fitSearches(ss []string) []string {
	var out []string
	for _, s := range ss[:min(len(ss), maxSearches)] {
		if len(s) <= maxSearchLen {
			out = append(out, s)
		}
	}
	for len(out) > 0 && len(strings.Join(out, " ")) > maxSearchLineChars {
		out = out[:len(out)-1]
	}
	return out
}

// Render writes c as resolv.conf: the search line, nameservers, options.
func (c ResolvConf) Render() []byte {
	var b bytes.Buffer
	if len(c.Searches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(c.Searches, " "))
	}
	for _, ns := range c.Nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if len(c.Options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(c.Options, " "))
	}
	return b.Bytes()
}
