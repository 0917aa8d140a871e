package apiserver

import (
	"errors"
	"fmt"
	"k8s.io/apimachinery/pkg/api/resource"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/apiserver/pkg/registry/rest"

	"github.com/duet-net/duet/internal/netaddr"
)

type restStorage = rest.Storage

// Config is `duet server`'s validated configuration.
type Config struct {
	DataDir       string
	BindAddress   net.IP
	SecurePort    int
	ServiceRanges []netip.Prefix // primary first
	ClusterCIDRs  netaddr.ClusterCIDRs
	DualStack     bool
	EtcdServers   []string
	// RepairInterval is how often cluster IP records are reconciled.
	RepairInterval time.Duration
	// NodePorts is --service-node-port-range: the first and last port.
	NodePortBase, NodePortEnd int
	// LBPools are --load-balancer-ip-pool: CIDRs of either family from
	// which LoadBalancer Services get their ingress IPs.
	LBPools []netip.Prefix
	// MemoryLimit is --memory-limit in bytes: the Go runtime's soft memory
	// limit (0: none, or GOMEMLIMIT's).
	MemoryLimit int64
	// Join are --join's URLs: running servers whose etcd cluster this
	// one joins; JoinToken and JoinTokenFile are --token and --token-file.
	Join                     []string
	JoinToken, JoinTokenFile string
	NodeHealth               NodeHealth
}

// Flags are the command-line values before validation.
type Flags struct {
	DataDir, BindAddress, ServiceClusterIPRange, ClusterCIDR string
	SecurePort                                               int
	NodeMasks                                                netaddr.NodeMaskFlags
	FeatureGates                                             map[string]string
	EtcdServers                                              []string
	RepairInterval                                           time.Duration
	NodePortRange                                            string
	LBPools                                                  []string
	MemoryLimit                                              string
	Join                                                     []string
	JoinToken, JoinTokenFile                                 string
	NodeHealth                                               NodeHealth
}

// knownGates are the feature gates Duet understands, with defaults.
var knownGates = map[string]bool{"IPv6DualStack": true}

// Complete validates flags with Kubernetes' rules and messages.
func (f Flags) Complete() (*Config, error) {
	if f.DataDir == "" {
		return nil, errors.New("--data-dir is required")
	}
	cfg := &Config{DataDir: f.DataDir, SecurePort: f.SecurePort, EtcdServers: f.EtcdServers, DualStack: knownGates["IPv6DualStack"], RepairInterval: f.RepairInterval}
	if cfg.RepairInterval <= 0 {
		cfg.RepairInterval = 30 * time.Second
	}
	if err := f.NodeHealth.validate(); err != nil {
		return nil, err
	}
	cfg.NodeHealth = f.NodeHealth
	if f.SecurePort < 0 || f.SecurePort > 65535 {
		return nil, fmt.Errorf("--secure-port %d must be between 0 and 65535", f.SecurePort)
	}
	cfg.BindAddress = net.ParseIP(f.BindAddress)
	if cfg.BindAddress == nil {
		return nil, fmt.Errorf("--bind-address %q is not a valid IP address", f.BindAddress)
	}
	names := make([]string, 0, len(f.FeatureGates))
	for k := range f.FeatureGates {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if _, ok := knownGates[k]; !ok {
			return nil, fmt.Errorf("--feature-gates: unrecognized feature gate: %s (known: IPv6DualStack)", k)
		}
		v, err := strconv.ParseBool(f.FeatureGates[k])
		if err != nil {
			return nil, fmt.Errorf("--feature-gates: invalid value of %s=%s, err: %v", k, f.FeatureGates[k], err)
		}
		cfg.DualStack = v
	}

	ranges, err := netaddr.ParseServiceClusterIPRange(f.ServiceClusterIPRange)
	if err != nil {
		return nil, err
	}
	if len(ranges) > 1 && !cfg.DualStack {
		return nil, errors.New("--service-cluster-ip-range must not contain more than one entry when dual-stack is disabled (--feature-gates IPv6DualStack=false)")
	}
	cfg.ServiceRanges = ranges

	cidrs, err := netaddr.ParseClusterCIDRs(f.ClusterCIDR, f.NodeMasks)
	if err != nil {
		return nil, err
	}
	if len(cidrs.CIDRs) > 1 && !cfg.DualStack {
		return nil, errors.New("--cluster-cidr must not contain more than one entry when dual-stack is disabled (--feature-gates IPv6DualStack=false)")
	}
	cfg.ClusterCIDRs = cidrs
	if cfg.NodePortBase, cfg.NodePortEnd, err = ParsePortRange(f.NodePortRange); err != nil {
		return nil, fmt.Errorf("--service-node-port-range: %w", err)
	}
	for _, s := range f.LBPools {
		p, err := netaddr.ParseCIDR(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("--load-balancer-ip-pool: %w", err)
		}
		for _, q := range cfg.LBPools {
			if q.Overlaps(p) {
				return nil, fmt.Errorf("--load-balancer-ip-pool: %s overlaps %s", p, q)
			}
		}
		for _, r := range cfg.ServiceRanges {
			if r.Overlaps(p) {
				return nil, fmt.Errorf("--load-balancer-ip-pool: %s overlaps --service-cluster-ip-range %s", p, r)
			}
		}
		if !cfg.DualStack && len(cfg.ServiceRanges) > 0 && p.Addr().Is4() != cfg.ServiceRanges[0].Addr().Is4() {
			return nil, fmt.Errorf("--load-balancer-ip-pool: %s is of the other family, and dual-stack is disabled", p)
		}
		cfg.LBPools = append(cfg.LBPools, p)
	}
	if f.MemoryLimit != "" {
		q, err := resource.ParseQuantity(f.MemoryLimit)
		if err != nil || q.Sign() < 0 {
			return nil, fmt.Errorf("--memory-limit %q: must be a quantity of bytes such as 2560Mi or 3Gi", f.MemoryLimit)
		}
		if cfg.MemoryLimit = q.Value(); cfg.MemoryLimit != 0 && cfg.MemoryLimit < 256<<20 {
			return nil, fmt.Errorf("--memory-limit %s: must be at least 256Mi", f.MemoryLimit)
		}
	}
	if cfg.Join, err = ParseJoinURLs(f.Join); err != nil {
		return nil, err
	}
	if len(cfg.Join) > 0 && len(f.EtcdServers) > 0 {
		return nil, errors.New("--join and --etcd-servers exclude each other: servers on an external etcd share it, and only servers with an embedded etcd join one another")
	}
	cfg.JoinToken, cfg.JoinTokenFile = strings.TrimSpace(f.JoinToken), f.JoinTokenFile
	for _, s := range f.EtcdServers {
		if !strings.HasPrefix(s, "http://") && !strings.HasPrefix(s, "https://") {
			return nil, fmt.Errorf("--etcd-servers: %q must be a URL (http://host:port or https://host:port)", s)
		}
	}
	return cfg, nil
}

// ParsePortRange parses a port range as kube-apiserver's
// --service-node-port-range does: "base-end" or "base+size"; empty means
// Kubernetes' default, 30000-32767.
func ParsePortRange(v string) (base, end int, err error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 30000, 32767, nil
	}
	var a, b string
	plus := false
	if i := strings.IndexAny(v, "-+"); i > 0 {
		a, b, plus = v[:i], v[i+1:], v[i] == '+'
	} else {
		a, b = v, v
	}
	base, err1 := strconv.Atoi(a)
	n, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("unable to parse port range: %s: want base-end or base+size", v)
	}
	end = n
	if plus {
		end = base + n - 1
	}
	if base < 1 || end > 65535 || base > end {
		return 0, 0, fmt.Errorf("invalid port range %s: ports must lie in 1-65535, the first no higher than the last", v)
	}
	return base, end, nil
}
