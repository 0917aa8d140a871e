package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/netaddr"
)

// DefaultDataDir is where reservations are kept unless the config's
// ipam.dataDir says otherwise: host-local's default, so that swapping
// "host-local" for "duet-ipam" keeps state where operators look for it.
const DefaultDataDir = "/var/lib/cni/networks"

// DefaultCooldown is how long a released address rests before it is handed
// out again (unless nothing else is free): the pod-IP policy's default.
const DefaultCooldown = alloc.DefaultPodIPCooldown

// Config is a parsed, validated network configuration as duet-ipam sees it.
type Config struct {
	CNIVersion string
	// Name is the network's name; each network has its own store.
	Name string
	// RangeSets yield one address each, in order (primary family first).
	RangeSets []alloc.PodRangeSet
	// Routes are returned as given, for every attachment.
	Routes []*types.Route
	// DNS is read from ipam.resolvConf, as host-local does.
	DNS types.DNS
	// DataDir holds one directory per network, with the store inside.
	DataDir  string
	Cooldown time.Duration
	// Requested are specific addresses asked for through CNI_ARGS IP=,
	// args.cni.ips or runtimeConfig.ips, as host-local accepts them.
	Requested []netip.Addr
	// ValidAttachments is the GC argument cni.dev/valid-attachments: nil
	// when the key is absent (or null), empty when the runtime lists none.
	ValidAttachments []types.GCAttachment
	// PrevResult is the prevResult of a CHECK, if any.
	PrevResult json.RawMessage
}

// The JSON forms, kept as strings so that every error can name its field.
type rawNet struct {
	CNIVersion    string   `json:"cniVersion"`
	Name          string   `json:"name"`
	IPAM          *rawIPAM `json:"ipam"`
	RuntimeConfig struct {
		IPRanges [][]rawRange `json:"ipRanges"`
		IPs      []string     `json:"ips"`
	} `json:"runtimeConfig"`
	Args *struct {
		CNI *struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments"`
	PrevResult       json.RawMessage      `json:"prevResult"`
}

type rawIPAM struct {
	Type string `json:"type"`
	rawRange
	Ranges     [][]rawRange      `json:"ranges"`
	PodCIDRs   []string          `json:"podCIDRs"`
	Routes     []json.RawMessage `json:"routes"`
	DataDir    string            `json:"dataDir"`
	ResolvConf string            `json:"resolvConf"`
	Cooldown   *string           `json:"cooldown"`
}

type rawRange struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Gateway    string `json:"gateway"`
}

type rawRoute struct {
	Dst string `json:"dst"`
	GW  string `json:"gw"`
}

// FieldError is a configuration error that names the offending field the
// way a user finds it in the JSON: ipam.ranges[1][0].subnet.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Parse reads the network configuration a runtime passes on stdin, and
// CNI_ARGS. It accepts host-local's ipam section (ranges, the older single
// range, routes, dataDir, resolvConf, and requested IPs through CNI_ARGS,
// args.cni.ips and runtimeConfig.ips), or ipam.podCIDRs as the Duet agent
// passes them: one range set per CIDR, in order.
func Parse(stdin []byte, cniArgs string) (*Config, error) {
	var n rawNet
	if err := json.Unmarshal(stdin, &n); err != nil {
		return nil, fmt.Errorf("decoding the network configuration: %w", err)
	}
	if n.Name == "" {
		return nil, fieldErr("name", "missing network name")
	}
	if err := utils.ValidateNetworkName(n.Name); err != nil {
		return nil, fieldErr("name", "%s", err.Msg)
	}
	if n.IPAM == nil {
		return nil, errors.New("IPAM config missing 'ipam' key")
	}
	c := &Config{
		CNIVersion:       n.CNIVersion,
		Name:             n.Name,
		DataDir:          n.IPAM.DataDir,
		Cooldown:         DefaultCooldown,
		ValidAttachments: n.ValidAttachments,
		PrevResult:       n.PrevResult,
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if n.IPAM.Cooldown != nil {
		d, err := time.ParseDuration(*n.IPAM.Cooldown)
		if err != nil || d < 0 {
			return nil, fieldErr("ipam.cooldown", "%q is not a duration of zero or more, such as \"60s\"", *n.IPAM.Cooldown)
		}
		c.Cooldown = d
	}

	// Range sets, in host-local's order: runtimeConfig.ipRanges, the old
	// single range, ipam.ranges; or ipam.podCIDRs.
	type namedSet struct {
		field string
		raw   []rawRange
	}
	var sets []namedSet
	for i, s := range n.RuntimeConfig.IPRanges {
		sets = append(sets, namedSet{fmt.Sprintf("runtimeConfig.ipRanges[%d]", i), s})
	}
	if n.IPAM.rawRange != (rawRange{}) {
		sets = append(sets, namedSet{"ipam", []rawRange{n.IPAM.rawRange}})
	}
	for i, s := range n.IPAM.Ranges {
		sets = append(sets, namedSet{fmt.Sprintf("ipam.ranges[%d]", i), s})
	}
	if len(n.IPAM.PodCIDRs) > 0 {
		if len(n.IPAM.Ranges) > 0 || n.IPAM.rawRange != (rawRange{}) {
			return nil, fieldErr("ipam.podCIDRs", "set either ipam.ranges or ipam.podCIDRs, not both")
		}
		if len(n.IPAM.PodCIDRs) > 2 {
			return nil, fieldErr("ipam.podCIDRs", "at most two CIDRs, one per IP family; got %d", len(n.IPAM.PodCIDRs))
		}
		for i, p := range n.IPAM.PodCIDRs {
			sets = append(sets, namedSet{fmt.Sprintf("ipam.podCIDRs[%d]", i), []rawRange{{Subnet: p}}})
		}
	}
	if len(sets) == 0 {
		return nil, fieldErr("ipam.ranges", "no IP ranges specified: give host-local's ranges, e.g. [[{\"subnet\":\"10.244.1.0/24\"}],[{\"subnet\":\"fd00:10:244:1::/64\"}]], or ipam.podCIDRs")
	}
	for _, ns := range sets {
		s, err := parseRangeSet(ns.field, ns.raw, strings.HasPrefix(ns.field, "ipam.podCIDRs"))
		if err != nil {
			return nil, err
		}
		c.RangeSets = append(c.RangeSets, s)
	}
	if len(n.IPAM.PodCIDRs) == 2 && c.RangeSets[0].Family() == c.RangeSets[1].Family() {
		return nil, fieldErr("ipam.podCIDRs", "%s and %s are both %s; a node has at most one pod CIDR per family", n.IPAM.PodCIDRs[0], n.IPAM.PodCIDRs[1], c.RangeSets[0].Family())
	}
	if old, _ := version.GreaterThanOrEqualTo(resultVersion(c), "0.3.0"); !old {
		perFamily := map[netaddr.Family]int{}
		for _, s := range c.RangeSets {
			if perFamily[s.Family()]++; perFamily[s.Family()] > 1 {
				return nil, fieldErr("cniVersion", "CNI version %s does not support more than 1 address per family; use 0.3.0 or later", resultVersion(c))
			}
		}
	}
	for i := range sets {
		for j := 0; j < i; j++ {
			if a, b, ok := overlap(c.RangeSets[j], c.RangeSets[i]); ok {
				return nil, fieldErr(sets[i].field, "%s overlaps %s of %s; range sets must not overlap", b, a, sets[j].field)
			}
		}
	}

	for i, raw := range n.IPAM.Routes {
		r, err := parseRoute(fmt.Sprintf("ipam.routes[%d]", i), raw)
		if err != nil {
			return nil, err
		}
		c.Routes = append(c.Routes, r)
	}

	if n.IPAM.ResolvConf != "" {
		dns, err := parseResolvConf(n.IPAM.ResolvConf)
		if err != nil {
			return nil, fieldErr("ipam.resolvConf", "%v", err)
		}
		c.DNS = dns
	}

	// Requested addresses, as host-local takes them.
	var requested []struct{ field, value string }
	if cniArgs != "" {
		for _, kv := range strings.Split(cniArgs, ";") {
			k, v, _ := strings.Cut(kv, "=")
			if k == "IP" {
				requested = append(requested, struct{ field, value string }{"CNI_ARGS IP", v})
			}
		}
	}
	if n.Args != nil && n.Args.CNI != nil {
		for i, v := range n.Args.CNI.IPs {
			requested = append(requested, struct{ field, value string }{fmt.Sprintf("args.cni.ips[%d]", i), v})
		}
	}
	for i, v := range n.RuntimeConfig.IPs {
		requested = append(requested, struct{ field, value string }{fmt.Sprintf("runtimeConfig.ips[%d]", i), v})
	}
	for _, r := range requested {
		a, err := parseAddrOrCIDR(r.value)
		if err != nil {
			return nil, fieldErr(r.field, "%v", err)
		}
		found := false
		for _, s := range c.RangeSets {
			if s.Contains(a) {
				found = true
			}
		}
		if !found {
			return nil, fieldErr(r.field, "requested IP %s is in none of the configured ranges", a)
		}
		c.Requested = append(c.Requested, a)
	}
	return c, nil
}

func parseRangeSet(field string, raw []rawRange, podCIDR bool) (alloc.PodRangeSet, error) {
	if len(raw) == 0 {
		return nil, fieldErr(field, "empty range set: give at least one range, e.g. [{\"subnet\":\"10.244.1.0/24\"}]")
	}
	set := make(alloc.PodRangeSet, 0, len(raw))
	for j, rr := range raw {
		f := fmt.Sprintf("%s[%d]", field, j)
		if podCIDR || field == "ipam" {
			f = field // a pod CIDR, or the old single range: ipam.subnet
		}
		r, err := parseRange(f, rr, podCIDR)
		if err != nil {
			return nil, err
		}
		if j > 0 && r.Family() != set[0].Family() {
			return nil, fieldErr(f+".subnet", "%s is %s but %s[0] is %s; a range set holds one family", r.Subnet, r.Family(), field, set[0].Family())
		}
		for k, o := range set {
			if rangesOverlap(o, r) {
				return nil, fieldErr(f, "%s overlaps %s[%d] (%s)", r, field, k, o)
			}
		}
		set = append(set, r)
	}
	return set, nil
}

func parseRange(field string, rr rawRange, podCIDR bool) (alloc.PodRange, error) {
	subField := field + ".subnet"
	if podCIDR {
		subField = field
	}
	if rr.Subnet == "" {
		return alloc.PodRange{}, fieldErr(subField, "missing subnet")
	}
	subnet, err := netaddr.ParseCIDR(rr.Subnet)
	if err != nil {
		return alloc.PodRange{}, fieldErr(subField, "%v", err)
	}
	// The whole subnet with its first address as the gateway, unless the
	// fields below say otherwise.
	r, err := alloc.NewPodRange(subnet)
	if err != nil {
		return alloc.PodRange{}, fieldErr(subField, "%v", err)
	}
	addr := func(name, value string, def netip.Addr) (netip.Addr, error) {
		if value == "" {
			return def, nil
		}
		a, err := netip.ParseAddr(value)
		if err != nil {
			return netip.Addr{}, fieldErr(field+"."+name, "%q is not an IP address", value)
		}
		a = a.Unmap()
		if !subnet.Contains(a) {
			return netip.Addr{}, fieldErr(field+"."+name, "%s is not in subnet %s", a, subnet)
		}
		return a, nil
	}
	if r.Gateway, err = addr("gateway", rr.Gateway, r.Gateway); err != nil {
		return alloc.PodRange{}, err
	}
	if r.Start, err = addr("rangeStart", rr.RangeStart, r.Start); err != nil {
		return alloc.PodRange{}, err
	}
	if r.End, err = addr("rangeEnd", rr.RangeEnd, r.End); err != nil {
		return alloc.PodRange{}, err
	}
	if r.Start.Compare(r.End) > 0 {
		return alloc.PodRange{}, fieldErr(field+".rangeEnd", "%s is before rangeStart %s", r.End, r.Start)
	}
	if _, ok := r.FirstUsable(r.Start); !ok {
		return alloc.PodRange{}, fieldErr(field, "%s has no address to hand out: its only addresses are the gateway %s or reserved ones", r, r.Gateway)
	}
	return r, nil
}

func parseRoute(field string, raw json.RawMessage) (*types.Route, error) {
	var rr rawRoute
	if err := json.Unmarshal(raw, &rr); err != nil {
		return nil, fieldErr(field, "%v", err)
	}
	if rr.Dst == "" {
		return nil, fieldErr(field+".dst", "missing destination, e.g. \"0.0.0.0/0\" or \"::/0\"")
	}
	dst, err := netip.ParsePrefix(rr.Dst)
	if err != nil {
		return nil, fieldErr(field+".dst", "invalid CIDR address %q", rr.Dst)
	}
	if rr.GW != "" {
		gw, err := netip.ParseAddr(rr.GW)
		if err != nil {
			return nil, fieldErr(field+".gw", "%q is not an IP address", rr.GW)
		}
		if gw.Unmap().Is4() != dst.Addr().Is4() {
			return nil, fieldErr(field+".gw", "%s is %s but dst %s is %s", gw, netaddr.FamilyOf(gw.Unmap()), dst, netaddr.FamilyOf(dst.Addr()))
		}
	}
	var r types.Route
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fieldErr(field, "%v", err)
	}
	return &r, nil
}

func parseAddrOrCIDR(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a.Unmap(), nil
}

func rangesOverlap(a, b alloc.PodRange) bool {
	return a.Family() == b.Family() && a.Start.Compare(b.End) <= 0 && b.Start.Compare(a.End) <= 0
}

func overlap(a, b alloc.PodRangeSet) (alloc.PodRange, alloc.PodRange, bool) {
	for _, x := range a {
		for _, y := range b {
			if rangesOverlap(x, y) {
				return x, y, true
			}
		}
	}
	return alloc.PodRange{}, alloc.PodRange{}, false
}
