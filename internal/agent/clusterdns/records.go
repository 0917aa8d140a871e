package clusterdns

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// SpecVersion is the version of the Kubernetes DNS-based service
// discovery specification the records follow, served as the TXT record
// of dns-version.<zone>.
const SpecVersion = "1.1.0"

// maxChase bounds how many ExternalName CNAMEs inside the cluster domain
// one answer follows (a Service may name itself).
const maxChase = 8

// Result is the answer to one question.
type Result struct {
	Rcode             int
	Answer, Ns, Extra []dns.RR
	// Authoritative is set for the cluster's own names.
	Authoritative bool
	// Forward means the name is not the cluster's: the upstream
	// resolvers answer it.
	Forward bool
	// Chase is set when the answer ends in a CNAME to a name outside the
	// cluster domain: the server adds that name's records of the query's
	// type from upstream, as a recursive resolver does for its clients.
	Chase string
}

// Resolver answers questions about the cluster domain and the reverse
// zones of the cluster's addresses from a Source.
type Resolver struct {
	zone   string // lower case, fully qualified
	ttl    uint32
	src    Source
	owned  []netip.Prefix
	serial uint32
	nsName string
}

// NewResolver makes a resolver for the cluster domain (cluster.local),
// whose records live for ttl. owned are the cluster's service and pod
// CIDRs: a reverse lookup of an address in them that no object holds is
// NXDOMAIN; of any other address it is forwarded.
func NewResolver(domain string, ttl time.Duration, src Source, owned []netip.Prefix) (*Resolver, error) {
	zone, err := CanonicalDomain(domain)
	if err != nil {
		return nil, err
	}
	if ttl < time.Second || ttl > time.Hour {
		return nil, fmt.Errorf("record TTL %v: must be between 1s and 1h", ttl)
	}
	return &Resolver{
		zone: zone, ttl: uint32(ttl / time.Second), src: src, owned: owned,
		serial: uint32(time.Now().Unix()), nsName: "ns.dns." + zone,
	}, nil
}

// CanonicalDomain checks a cluster domain (--cluster-domain) and returns
// it lower case and fully qualified.
func CanonicalDomain(domain string) (string, error) {
	zone := dns.Fqdn(strings.ToLower(domain))
	if zone == "." {
		return "", fmt.Errorf("cluster domain %q: must not be empty or the root", domain)
	}
	if _, ok := dns.IsDomainName(zone); !ok || strings.ContainsAny(zone, `\ "();@$`) || strings.Contains(zone, "..") {
		return "", fmt.Errorf("cluster domain %q: not a DNS domain name (labels of letters, digits and dashes separated by dots)", domain)
	}
	for _, l := range dns.SplitDomainName(zone) {
		if len(l) > 63 {
			return "", fmt.Errorf("cluster domain %q: label %q is longer than 63 characters", domain, l)
		}
	}
	return zone, nil
}

// Zone is the cluster domain, fully qualified and lower case.
func (r *Resolver) Zone() string { return r.zone }

// Resolve answers qname (as the client spelled it: answers carry that
// spelling) for qtype.
func (r *Resolver) Resolve(qname string, qtype uint16) Result {
	lower := strings.ToLower(qname)
	if n, ok := parseName(lower, r.zone); ok {
		return r.cluster(qname, qtype, n, 0)
	}
	if isReverse(lower) {
		return r.reverse(qname, lower, qtype)
	}
	return Result{Forward: true}
}

func (r *Resolver) cluster(owner string, qtype uint16, n name, depth int) Result {
	if !r.src.Synced() {
		return Result{Rcode: dns.RcodeServerFailure}
	}
	switch n.kind {
	case kindApex:
		var rrs []dns.RR
		if qtype == dns.TypeSOA || qtype == dns.TypeANY {
			rrs = append(rrs, r.soa(r.zone))
		}
		if qtype == dns.TypeNS || qtype == dns.TypeANY {
			rrs = append(rrs, &dns.NS{Hdr: r.hdr(owner, dns.TypeNS), Ns: r.nsName})
		}
		return r.answer(rrs, nil)
	case kindEmpty:
		return r.nodata()
	case kindNamespace:
		return r.exists(r.src.HasServices(n.ns))
	case kindPodNamespace:
		return r.exists(r.src.HasPods(n.ns))
	case kindVersion:
		if qtype == dns.TypeTXT || qtype == dns.TypeANY {
			return r.answer([]dns.RR{&dns.TXT{Hdr: r.hdr(owner, dns.TypeTXT), Txt: []string{SpecVersion}}}, nil)
		}
		return r.nodata()
	case kindNameserver:
		var rrs []dns.RR
		if svc := r.src.Service("kube-system", "kube-dns"); svc != nil {
			rrs = r.addrs(owner, qtype, clusterIPs(svc))
		}
		return r.answer(rrs, nil)
	case kindService:
		return r.service(owner, qtype, n, depth)
	case kindEndpoint:
		return r.endpoint(owner, qtype, n)
	case kindProto, kindSRV:
		return r.srvName(owner, qtype, n)
	case kindPod:
		return r.pod(owner, qtype, n)
	}
	return r.nxdomain(r.zone)
}

// service answers <service>.<ns>.svc.<zone>.
func (r *Resolver) service(owner string, qtype uint16, n name, depth int) Result {
	svc := r.src.Service(n.ns, n.service)
	if svc == nil {
		return r.nxdomain(r.zone)
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return r.externalName(owner, qtype, svc, depth)
	}
	if qtype == dns.TypeSRV {
		answer, extra := r.srv(owner, svc, func(corev1.Protocol, string) bool { return true })
		return r.answer(answer, extra)
	}
	if headless(svc) {
		return r.answer(r.addrs(owner, qtype, endpointAddrs(svc, r.src.Slices(svc.Namespace, svc.Name), qtype)), nil)
	}
	return r.answer(r.addrs(owner, qtype, clusterIPs(svc)), nil)
}

// externalName answers an ExternalName Service's name: a CNAME, followed
// inside the cluster domain, and left to the server to follow outside it.
func (r *Resolver) externalName(owner string, qtype uint16, svc *corev1.Service, depth int) Result {
	target := dns.Fqdn(strings.ToLower(svc.Spec.ExternalName))
	if _, ok := dns.IsDomainName(target); !ok || target == "." {
		return r.nodata()
	}
	cname := &dns.CNAME{Hdr: r.hdr(owner, dns.TypeCNAME), Target: target}
	res := Result{Answer: []dns.RR{cname}, Authoritative: true}
	if qtype == dns.TypeCNAME || qtype == dns.TypeANY {
		return res
	}
	if n, ok := parseName(target, r.zone); ok {
		if depth >= maxChase {
			return res
		}
		sub := r.cluster(target, qtype, n, depth+1)
		res.Answer = append(res.Answer, sub.Answer...)
		res.Rcode, res.Ns, res.Extra, res.Chase = sub.Rcode, sub.Ns, sub.Extra, sub.Chase
		return res
	}
	res.Chase = target
	return res
}

// endpoint answers <hostname>.<service>.<ns>.svc.<zone>, the name of an
// endpoint of a headless Service: its hostname, or its address as a
// label when it has none.
func (r *Resolver) endpoint(owner string, qtype uint16, n name) Result {
	svc := r.src.Service(n.ns, n.service)
	if svc == nil || !headless(svc) {
		return r.nxdomain(r.zone)
	}
	labelAddr, isAddr := ParseAddrLabel(n.host)
	found := false
	var ips []netip.Addr
	for _, ep := range readyEndpoints(svc, r.src.Slices(svc.Namespace, svc.Name)) {
		match := ep.hostname == n.host
		if !match && isAddr && ep.hostname == "" {
			for _, a := range ep.addrs {
				match = match || a == labelAddr
			}
		}
		if match {
			found = true
			ips = append(ips, ep.addrs...)
		}
	}
	if !found {
		return r.nxdomain(r.zone)
	}
	return r.answer(r.addrs(owner, qtype, dedupeAddrs(ips)), nil)
}

// srvName answers _<port>._<proto>.<service>.<ns>.svc.<zone> and the
// _<proto> name above it.
func (r *Resolver) srvName(owner string, qtype uint16, n name) Result {
	svc := r.src.Service(n.ns, n.service)
	proto, ok := protocols[n.proto]
	if svc == nil || !ok || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return r.nxdomain(r.zone)
	}
	answer, extra := r.srv(owner, svc, func(p corev1.Protocol, name string) bool {
		return protocolOf(p) == proto && (n.kind == kindProto || name == n.port)
	})
	// The name exists when the Service has such a port, even without
	// endpoints; a headless Service's ports may also be its slices' alone
	// (a Service without selector whose slices someone else writes).
	exists := len(answer) > 0
	for _, p := range svc.Spec.Ports {
		if p.Name != "" && protocolOf(p.Protocol) == proto && (n.kind == kindProto || p.Name == n.port) {
			exists = true
		}
	}
	if !exists {
		return r.nxdomain(r.zone)
	}
	if n.kind == kindProto || (qtype != dns.TypeSRV && qtype != dns.TypeANY) {
		return r.nodata()
	}
	return r.answer(answer, extra)
}

var protocols = map[string]corev1.Protocol{"tcp": corev1.ProtocolTCP, "udp": corev1.ProtocolUDP, "sctp": corev1.ProtocolSCTP}

// protocolOf is a port's protocol, TCP when unset.
func protocolOf(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

// srv is the SRV records, owned by owner, of svc's named ports that
// match, with the targets' addresses as extra records: the Service's name
// for a Service with a cluster IP, each ready endpoint's name for a
// headless one.
func (r *Resolver) srv(owner string, svc *corev1.Service, match func(corev1.Protocol, string) bool) (answer, extra []dns.RR) {
	svcName := svc.Name + "." + svc.Namespace + ".svc." + r.zone
	type target struct {
		name string
		port int32
	}
	var targets []target
	addrsOf := map[string][]netip.Addr{}
	var order []string
	addTarget := func(name string, ips []netip.Addr) {
		if _, ok := addrsOf[name]; !ok {
			order = append(order, name)
		}
		addrsOf[name] = append(addrsOf[name], ips...)
	}
	if !headless(svc) {
		for _, p := range svc.Spec.Ports {
			if p.Name != "" && match(protocolOf(p.Protocol), p.Name) {
				targets = append(targets, target{svcName, p.Port})
			}
		}
		if len(targets) > 0 {
			addTarget(svcName, clusterIPs(svc))
		}
	} else {
		seen := map[target]bool{}
		for _, s := range r.src.Slices(svc.Namespace, svc.Name) {
			eps := readyEndpoints(svc, []*discoveryv1.EndpointSlice{s})
			for _, p := range s.Ports {
				if p.Name == nil || *p.Name == "" || p.Port == nil {
					continue
				}
				proto := corev1.ProtocolTCP
				if p.Protocol != nil {
					proto = *p.Protocol
				}
				if !match(proto, *p.Name) {
					continue
				}
				for _, ep := range eps {
					t := target{ep.label() + "." + svcName, *p.Port}
					addTarget(t.name, ep.addrs)
					if !seen[t] {
						seen[t] = true
						targets = append(targets, t)
					}
				}
			}
		}
	}
	weight := uint16(100)
	if len(targets) > 1 {
		weight = uint16(max(1, 100/len(targets)))
	}
	for _, t := range targets {
		answer = append(answer, &dns.SRV{Hdr: r.hdr(owner, dns.TypeSRV), Priority: 0, Weight: weight, Port: uint16(t.port), Target: t.name})
	}
	for _, name := range order {
		extra = append(extra, r.addrs(name, dns.TypeANY, dedupeAddrs(addrsOf[name]))...)
	}
	return answer, extra
}

// pod answers <address>.<ns>.pod.<zone> for a pod of that namespace with
// that address (one not yet finished).
func (r *Resolver) pod(owner string, qtype uint16, n name) Result {
	ip, ok := ParseAddrLabel(n.host)
	if !ok {
		return r.nxdomain(r.zone)
	}
	for _, p := range r.src.PodsByIP(ip) {
		if p.Namespace == n.ns && !finished(p) {
			return r.answer(r.addrs(owner, qtype, []netip.Addr{ip}), nil)
		}
	}
	return r.nxdomain(r.zone)
}

func finished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// reverse answers names under in-addr.arpa and ip6.arpa: PTR records of
// the cluster's addresses, NXDOMAIN for the other addresses of its CIDRs,
// and everything else forwarded.
func (r *Resolver) reverse(owner, lower string, qtype uint16) Result {
	p, ok := ParseReverse(lower)
	if !ok {
		return Result{Forward: true}
	}
	zone, owned := r.ownedZone(p)
	if p.Bits() < p.Addr().BitLen() {
		// A name above addresses: inside a CIDR of the cluster's it has
		// only children; outside, it is someone else's.
		if !owned {
			return Result{Forward: true}
		}
		if qtype == dns.TypeSOA && lower == zone {
			return r.answer([]dns.RR{r.soa(zone)}, nil)
		}
		return r.nodataIn(zone)
	}
	if !r.src.Synced() {
		if owned {
			return Result{Rcode: dns.RcodeServerFailure}
		}
		return Result{Forward: true}
	}
	names := r.ptrNames(p.Addr())
	if len(names) == 0 {
		if owned {
			return r.nxdomain(zone)
		}
		return Result{Forward: true}
	}
	if qtype != dns.TypePTR && qtype != dns.TypeANY {
		if !owned {
			zone = ReverseName(netip.PrefixFrom(p.Addr(), p.Addr().BitLen()))
		}
		return r.nodataIn(zone)
	}
	rrs := make([]dns.RR, 0, len(names))
	for _, n := range names {
		rrs = append(rrs, &dns.PTR{Hdr: r.hdr(owner, dns.TypePTR), Ptr: n})
	}
	return r.answer(rrs, nil)
}

// ownedZone reports whether p lies inside one of the cluster's CIDRs, and
// the reverse zone that CIDR's names fall in.
func (r *Resolver) ownedZone(p netip.Prefix) (string, bool) {
	for _, o := range r.owned {
		if o.Addr().Is4() == p.Addr().Is4() && o.Bits() <= p.Bits() && o.Contains(p.Addr()) {
			return ReverseName(o), true
		}
	}
	return "", false
}

// ptrNames are the names of ip: the Service whose cluster IP it is, the
// endpoints of headless Services at it (by hostname, else by address),
// or else the pod with it.
func (r *Resolver) ptrNames(ip netip.Addr) []string {
	var names []string
	seen := map[string]bool{}
	add := func(n string) {
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	for _, svc := range r.src.ServicesByIP(ip) {
		add(svc.Name + "." + svc.Namespace + ".svc." + r.zone)
	}
	var unnamed []string
	for _, s := range r.src.SlicesByAddr(ip) {
		svc := r.src.Service(s.Namespace, s.Labels[discoveryv1.LabelServiceName])
		if svc == nil || !headless(svc) {
			continue
		}
		for _, ep := range readyEndpoints(svc, []*discoveryv1.EndpointSlice{s}) {
			for _, a := range ep.addrs {
				if a != ip {
					continue
				}
				n := ep.label() + "." + svc.Name + "." + svc.Namespace + ".svc." + r.zone
				if ep.hostname != "" {
					add(n)
				} else {
					unnamed = append(unnamed, n)
				}
			}
		}
	}
	for _, n := range unnamed {
		add(n)
	}
	if len(names) > 0 {
		return names
	}
	for _, p := range r.src.PodsByIP(ip) {
		if !p.Spec.HostNetwork && !finished(p) {
			add(AddrLabel(ip) + "." + p.Namespace + ".pod." + r.zone)
		}
	}
	return names
}

// endpoint is one endpoint of a Service's slices.
type endpoint struct {
	hostname string
	addrs    []netip.Addr
}

// label is the endpoint's first label in names: its hostname, or its
// first address written as a label.
func (e endpoint) label() string {
	if e.hostname != "" {
		return e.hostname
	}
	return AddrLabel(e.addrs[0])
}

// readyEndpoints are the endpoints of the slices that DNS publishes: the
// ready ones, or all of them when the Service publishes not-ready
// addresses.
func readyEndpoints(svc *corev1.Service, slices []*discoveryv1.EndpointSlice) []endpoint {
	var out []endpoint
	for _, s := range slices {
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		for _, ep := range s.Endpoints {
			if !svc.Spec.PublishNotReadyAddresses && ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			e := endpoint{}
			if ep.Hostname != nil {
				e.hostname = strings.ToLower(*ep.Hostname)
			}
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() == (s.AddressType == discoveryv1.AddressTypeIPv4) {
					e.addrs = append(e.addrs, ip)
				}
			}
			if len(e.addrs) > 0 {
				out = append(out, e)
			}
		}
	}
	return out
}

// endpointAddrs are the addresses of the endpoints readyEndpoints keeps,
// of the families qtype asks for, sorted: the answer for a headless
// Service's name, which queries ask most, without building endpoints.
func endpointAddrs(svc *corev1.Service, slices []*discoveryv1.EndpointSlice, qtype uint16) []netip.Addr {
	var out []netip.Addr
	for _, s := range slices {
		v4 := s.AddressType == discoveryv1.AddressTypeIPv4
		if (!v4 && s.AddressType != discoveryv1.AddressTypeIPv6) ||
			(qtype == dns.TypeA && !v4) || (qtype == dns.TypeAAAA && v4) {
			continue
		}
		for _, ep := range s.Endpoints {
			if !svc.Spec.PublishNotReadyAddresses && ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() == v4 {
					out = append(out, ip)
				}
			}
		}
	}
	return dedupeAddrs(out)
}

func headless(svc *corev1.Service) bool { return svc.Spec.ClusterIP == corev1.ClusterIPNone }

// dedupeAddrs sorts ips and drops repeats (an address in two slices
// while an endpoint moves between them), in place.
func dedupeAddrs(ips []netip.Addr) []netip.Addr {
	if len(ips) < 2 {
		return ips
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return slices.Compact(ips)
}

// addrs are the A and AAAA records of ips that qtype asks for.
func (r *Resolver) addrs(owner string, qtype uint16, ips []netip.Addr) []dns.RR {
	var out []dns.RR
	for _, ip := range ips {
		switch {
		case ip.Is4() && (qtype == dns.TypeA || qtype == dns.TypeANY):
			out = append(out, &dns.A{Hdr: r.hdr(owner, dns.TypeA), A: ip.AsSlice()})
		case ip.Is6() && (qtype == dns.TypeAAAA || qtype == dns.TypeANY):
			out = append(out, &dns.AAAA{Hdr: r.hdr(owner, dns.TypeAAAA), AAAA: ip.AsSlice()})
		}
	}
	return out
}

func (r *Resolver) hdr(owner string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: owner, Rrtype: t, Class: dns.ClassINET, Ttl: r.ttl}
}

// soa is the SOA record of zone; its minimum is the record TTL, so that
// resolvers cache a missing name no longer than a present one.
func (r *Resolver) soa(zone string) dns.RR {
	return &dns.SOA{
		Hdr: r.hdr(zone, dns.TypeSOA), Ns: r.nsName, Mbox: "hostmaster." + r.zone,
		Serial: r.serial, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: r.ttl,
	}
}

// answer is a positive answer, or NODATA when there are no records.
func (r *Resolver) answer(rrs, extra []dns.RR) Result {
	if len(rrs) == 0 {
		return r.nodata()
	}
	return Result{Answer: rrs, Extra: extra, Authoritative: true}
}

// nodata is NOERROR without records: the name exists with records of
// other types (a Service of the other family, say).
func (r *Resolver) nodata() Result { return r.nodataIn(r.zone) }

func (r *Resolver) nodataIn(zone string) Result {
	return Result{Ns: []dns.RR{r.soa(zone)}, Authoritative: true}
}

func (r *Resolver) nxdomain(zone string) Result {
	return Result{Rcode: dns.RcodeNameError, Ns: []dns.RR{r.soa(zone)}, Authoritative: true}
}

func (r *Resolver) exists(ok bool) Result {
	if ok {
		return r.nodata()
	}
	return r.nxdomain(r.zone)
}
