package clusterdns

import (
	"net/netip"
	"strconv"
	"strings"
)

// kind is what a name inside the cluster domain stands for, by the
// Kubernetes DNS specification's layout.
type kind int

const (
	kindNone         kind = iota // matches no layout: NXDOMAIN
	kindApex                     // <zone>
	kindEmpty                    // svc.<zone>, pod.<zone>, dns.<zone>: names with children only
	kindNamespace                // <ns>.svc.<zone>
	kindService                  // <service>.<ns>.svc.<zone>
	kindEndpoint                 // <hostname>.<service>.<ns>.svc.<zone>
	kindProto                    // _<proto>.<service>.<ns>.svc.<zone>
	kindSRV                      // _<port>._<proto>.<service>.<ns>.svc.<zone>
	kindPodNamespace             // <ns>.pod.<zone>
	kindPod                      // <address>.<ns>.pod.<zone>
	kindNameserver               // ns.dns.<zone>
	kindVersion                  // dns-version.<zone>
)

// name is a query name inside the cluster domain, split into its parts.
type name struct {
	kind kind
	// ns, service, host, port and proto are labels of the name; proto
	// and port without their leading underscore.
	ns, service, host, port, proto string
}

// parseName splits qname, lower case and fully qualified, by the layout of
// cluster names under zone (lower case, fully qualified, "cluster.local.").
// ok is false for a name outside zone.
func parseName(qname, zone string) (n name, ok bool) {
	var rest string
	switch {
	case qname == zone:
		return name{kind: kindApex}, true
	case len(qname) > len(zone) && strings.HasSuffix(qname, zone) && qname[len(qname)-len(zone)-1] == '.':
		rest = qname[:len(qname)-len(zone)-1]
	default:
		return name{}, false
	}
	// Escapes (\. inside a label, \DDD) never occur in names Kubernetes
	// objects can have; such a name is none of the cluster's.
	if strings.IndexByte(rest, '\\') >= 0 {
		return name{}, true
	}
	var labels [6]string
	count := 0
	for rest != "" {
		if count == len(labels) {
			return name{}, true
		}
		i := strings.LastIndexByte(rest, '.')
		labels[count] = rest[i+1:]
		if labels[count] == "" {
			return name{}, true
		}
		count++
		if i < 0 {
			break
		}
		rest = rest[:i]
	}
	// labels[0] is the one nearest the zone.
	switch labels[0] {
	case "svc":
		switch count {
		case 1:
			return name{kind: kindEmpty}, true
		case 2:
			return name{kind: kindNamespace, ns: labels[1]}, true
		case 3:
			return name{kind: kindService, ns: labels[1], service: labels[2]}, true
		case 4:
			if p, ok := strings.CutPrefix(labels[3], "_"); ok {
				return name{kind: kindProto, ns: labels[1], service: labels[2], proto: p}, true
			}
			return name{kind: kindEndpoint, ns: labels[1], service: labels[2], host: labels[3]}, true
		case 5:
			proto, ok1 := strings.CutPrefix(labels[3], "_")
			port, ok2 := strings.CutPrefix(labels[4], "_")
			if ok1 && ok2 && proto != "" && port != "" {
				return name{kind: kindSRV, ns: labels[1], service: labels[2], proto: proto, port: port}, true
			}
		}
	case "pod":
		switch count {
		case 1:
			return name{kind: kindEmpty}, true
		case 2:
			return name{kind: kindPodNamespace, ns: labels[1]}, true
		case 3:
			return name{kind: kindPod, ns: labels[1], host: labels[2]}, true
		}
	case "dns":
		switch {
		case count == 1:
			return name{kind: kindEmpty}, true
		case count == 2 && labels[1] == "ns":
			return name{kind: kindNameserver}, true
		}
	case "dns-version":
		if count == 1 {
			return name{kind: kindVersion}, true
		}
	}
	return name{}, true
}

// ParseAddrLabel reads the one-label form of an address that pod and
// endpoint names use: 10-244-0-2 for 10.244.0.2, fd00-10-244--2 for
// fd00:10:244::2 (dashes for colons, compressed or not). Upper-case hex
// digits are accepted; zones and IPv4-mapped IPv6 addresses are not.
func ParseAddrLabel(label string) (netip.Addr, bool) {
	if label == "" || len(label) > 63 {
		return netip.Addr{}, false
	}
	if strings.Count(label, "-") == 3 && !strings.Contains(label, "--") {
		if a, err := netip.ParseAddr(strings.ReplaceAll(label, "-", ".")); err == nil && a.Is4() {
			return a, true
		}
	}
	if strings.ContainsAny(label, ".:%") {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(strings.ReplaceAll(label, "-", ":"))
	if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a, true
}

// AddrLabel is the label ParseAddrLabel reads back to a: dashes for the
// dots of IPv4 and the colons of compressed IPv6. A compressed IPv6
// address that would start or end with a dash (::1, fd00::) is written
// uncompressed, since a DNS label may not.
func AddrLabel(a netip.Addr) string {
	if a.Is4() {
		return strings.ReplaceAll(a.String(), ".", "-")
	}
	s := strings.ReplaceAll(a.WithZone("").String(), ":", "-")
	if !strings.HasPrefix(s, "-") && !strings.HasSuffix(s, "-") {
		return s
	}
	b := a.As16()
	var sb strings.Builder
	for i := 0; i < 16; i += 2 {
		if i > 0 {
			sb.WriteByte('-')
		}
		sb.WriteString(strconv.FormatUint(uint64(b[i])<<8|uint64(b[i+1]), 16))
	}
	return sb.String()
}

const (
	reverse4 = "in-addr.arpa."
	reverse6 = "ip6.arpa."
)

// isReverse reports whether qname (lower case, fully qualified) is under
// one of the reverse-mapping trees.
func isReverse(qname string) bool {
	return strings.HasSuffix(qname, "."+reverse4) || qname == reverse4 ||
		strings.HasSuffix(qname, "."+reverse6) || qname == reverse6
}

// ParseReverse reads a name under in-addr.arpa or ip6.arpa (lower case,
// fully qualified) as the prefix it stands for: 2.0.244.10.in-addr.arpa.
// is 10.244.0.2/32, 244.10.in-addr.arpa. is 10.244.0.0/16, and an ip6.arpa
// name of n nibbles a /4n. Octets are decimal without leading zeros,
// nibbles single hex digits, as RFC 1035 and RFC 3596 write them.
func ParseReverse(qname string) (netip.Prefix, bool) {
	if rest, ok := strings.CutSuffix(qname, reverse4); ok {
		var b [4]byte
		n := 0
		for rest != "" {
			label, after, found := strings.Cut(rest, ".")
			if !found || n == 4 {
				return netip.Prefix{}, false
			}
			v, err := strconv.ParseUint(label, 10, 8)
			if err != nil || (len(label) > 1 && label[0] == '0') || label[0] == '+' {
				return netip.Prefix{}, false
			}
			b[n] = byte(v)
			n++
			rest = after
		}
		// Labels come least significant first.
		var a [4]byte
		for i := range n {
			a[i] = b[n-1-i]
		}
		return netip.PrefixFrom(netip.AddrFrom4(a), 8*n), true
	}
	if rest, ok := strings.CutSuffix(qname, reverse6); ok {
		var nibbles [32]byte
		n := 0
		for rest != "" {
			if n == 32 || len(rest) < 2 || rest[1] != '.' {
				return netip.Prefix{}, false
			}
			v, ok := hexNibble(rest[0])
			if !ok {
				return netip.Prefix{}, false
			}
			nibbles[n] = v
			n++
			rest = rest[2:]
		}
		var a [16]byte
		for i := range n {
			pos := n - 1 - i // most significant first
			if pos%2 == 0 {
				a[pos/2] |= nibbles[i] << 4
			} else {
				a[pos/2] |= nibbles[i]
			}
		}
		return netip.PrefixFrom(netip.AddrFrom16(a), 4*n), true
	}
	return netip.Prefix{}, false
}

func hexNibble(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// ReverseName is the name under in-addr.arpa or ip6.arpa that stands for
// p, rounded down to whole octets (IPv4) or nibbles (IPv6): the zone a
// reverse lookup of p's addresses falls in.
func ReverseName(p netip.Prefix) string {
	var sb strings.Builder
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		for i := p.Bits()/8 - 1; i >= 0; i-- {
			sb.WriteString(strconv.Itoa(int(b[i])))
			sb.WriteByte('.')
		}
		sb.WriteString(reverse4)
		return sb.String()
	}
	b := a.As16()
	const hex = "0123456789abcdef"
	for i := p.Bits()/4 - 1; i >= 0; i-- {
		v := b[i/2]
		if i%2 == 0 {
			v >>= 4
		}
		sb.WriteByte(hex[v&0xf])
		sb.WriteByte('.')
	}
	sb.WriteString(reverse6)
	return sb.String()
}
