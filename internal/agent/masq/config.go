// Package masq is Duet's egress masquerading, compatible with the
// ip-masq-agent's configuration file: traffic leaving the node for a
// destination that is neither local, nor in the cluster's pod CIDRs, nor in
// the configured non-masquerade CIDRs has its source rewritten to the
// node's address. The rules live in nftables tables of their own, one per
// family ("ip duet-masq" and "ip6 duet-masq"), whose non-masquerade
// prefixes are interval sets, so a list of ten thousand CIDRs costs a
// packet what a list of three does.
package masq

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// DefaultResyncInterval is ip-masq-agent's.
const DefaultResyncInterval = 60 * time.Second

// MinResyncInterval is the shortest resyncInterval a file may ask for.
// ip-masq-agent takes any value and, below a few milliseconds, spends a
// core re-reading its file and rewriting its rules; a resync repairs
// tampering, which a second's wait does not make worse.
const MinResyncInterval = time.Second

var (
	// DefaultNonMasqueradeCIDRs is ip-masq-agent's default list: the RFC
	// 1918 private ranges.
	DefaultNonMasqueradeCIDRs = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
	}
	// LinkLocalIPv4 and LinkLocalIPv6 are left alone unless masqLinkLocal
	// and masqLinkLocalIPv6 say otherwise.
	LinkLocalIPv4 = netip.MustParsePrefix("169.254.0.0/16")
	LinkLocalIPv6 = netip.MustParsePrefix("fe80::/10")
)

// Config is an ip-masq-agent configuration file, with defaults filled in.
type Config struct {
	// NonMasqueradeCIDRs are the destinations, of both families, that keep
	// the pod's source address.
	NonMasqueradeCIDRs []netip.Prefix
	// DefaultNonMasquerade is true when the file did not set
	// nonMasqueradeCIDRs. Then NonMasqueradeCIDRs holds ip-masq-agent's
	// IPv4 defaults, and, because Duet is dual-stack where ip-masq-agent
	// had no IPv6 default, the cluster's IPv6 service CIDRs are added as
	// the IPv6 default (see Config.Rules).
	DefaultNonMasquerade bool
	// MasqLinkLocal masquerades traffic to 169.254.0.0/16 too.
	MasqLinkLocal bool
	// MasqLinkLocalIPv6 masquerades traffic to fe80::/10 too.
	MasqLinkLocalIPv6 bool
	// ResyncInterval is how often the file is re-read and the rules
	// checked against the kernel. Never below MinResyncInterval.
	ResyncInterval time.Duration
}

// DefaultConfig is what a node without a configuration file gets.
func DefaultConfig() Config {
	return Config{
		NonMasqueradeCIDRs:   slices.Clone(DefaultNonMasqueradeCIDRs),
		DefaultNonMasquerade: true,
		ResyncInterval:       DefaultResyncInterval,
	}
}

// Equal reports whether two configurations program the same rules and
// resync at the same pace.
func (c Config) Equal(o Config) bool {
	return slices.Equal(c.NonMasqueradeCIDRs, o.NonMasqueradeCIDRs) &&
		c.DefaultNonMasquerade == o.DefaultNonMasquerade &&
		c.MasqLinkLocal == o.MasqLinkLocal &&
		c.MasqLinkLocalIPv6 == o.MasqLinkLocalIPv6 &&
		c.ResyncInterval == o.ResyncInterval
}

// Rules is what the configuration asks of the kernel on a node of a
// cluster with the given pod and service CIDRs. Pod CIDRs are never
// masqueraded whatever the file says: pod-to-pod traffic must keep its
// source for network policy and for replies to find their way back.
func (c Config) Rules(clusterCIDRs, serviceCIDRs []netip.Prefix) Rules {
	r := Rules{NeverMasquerade: slices.Clone(clusterCIDRs)}
	r.NonMasquerade = append(r.NonMasquerade, c.NonMasqueradeCIDRs...)
	if c.DefaultNonMasquerade {
		for _, s := range serviceCIDRs {
			if s.Addr().Is6() {
				r.NonMasquerade = append(r.NonMasquerade, s)
			}
		}
	}
	if !c.MasqLinkLocal {
		r.NonMasquerade = append(r.NonMasquerade, LinkLocalIPv4)
	}
	if !c.MasqLinkLocalIPv6 {
		r.NonMasquerade = append(r.NonMasquerade, LinkLocalIPv6)
	}
	return r
}

// The file's keys. cidrLimit is not in Config: ip-masq-agent files carry
// it, so it is accepted and enforced, but Duet itself has no limit.
const (
	keyNonMasqueradeCIDRs = "nonMasqueradeCIDRs"
	keyCIDRLimit          = "cidrLimit"
	keyMasqLinkLocal      = "masqLinkLocal"
	keyMasqLinkLocalIPv6  = "masqLinkLocalIPv6"
	keyResyncInterval     = "resyncInterval"
)

var knownKeys = []string{keyNonMasqueradeCIDRs, keyCIDRLimit, keyMasqLinkLocal, keyMasqLinkLocalIPv6, keyResyncInterval}

// maxReported bounds how many invalid entries one error lists, so that a
// generated file with thousands of bad lines still yields a readable event.
const maxReported = 10

// Parse reads an ip-masq-agent configuration, YAML or JSON. Keys that are
// absent keep their defaults; nonMasqueradeCIDRs, when present, replaces
// the default list (an empty or null list masquerades everything but
// link-local and the pod CIDRs, as in ip-masq-agent). Where ip-masq-agent
// would silently ignore a mistake (an unknown or misspelt key, a duplicate
// key) or misbehave on it (a resyncInterval below a second), Parse
// refuses the file: a typo must not quietly turn masquerading back to
// the defaults. Every error names the field and the reason.
func Parse(data []byte) (Config, error) {
	c := DefaultConfig()
	fields, err := topLevel(data)
	if err != nil {
		return Config{}, err
	}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	limit := -1
	for _, f := range fields {
		switch f.key {
		case keyNonMasqueradeCIDRs:
			cidrs, err := parseCIDRList(f.value)
			add(err)
			c.NonMasqueradeCIDRs, c.DefaultNonMasquerade = cidrs, false
		case keyCIDRLimit:
			n, err := parseLimit(f.value)
			add(err)
			limit = n
		case keyMasqLinkLocal:
			add(parseBool(f.key, f.value, &c.MasqLinkLocal))
		case keyMasqLinkLocalIPv6:
			add(parseBool(f.key, f.value, &c.MasqLinkLocalIPv6))
		case keyResyncInterval:
			add(parseInterval(f.value, &c.ResyncInterval))
		default:
			add(unknownKey(f.key))
		}
	}
	if limit >= 0 && len(c.NonMasqueradeCIDRs) > limit {
		// ip-masq-agent's message, so that a file moved between the two
		// fails the same way.
		add(fmt.Errorf("%s: the daemon can only accept up to %d CIDRs (excluding link-local), but got %d CIDRs (excluding link local)", keyCIDRLimit, limit, len(c.NonMasqueradeCIDRs)))
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

// Load reads the configuration file at path. A file that does not exist
// means the defaults, as in ip-masq-agent; any other failure is an error.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return DefaultConfig(), nil
	}
	if err != nil {
		return Config{}, fmt.Errorf("reading masquerade config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("masquerade config %s is invalid, keeping the rules in force: %w", path, err)
	}
	return c, nil
}

type field struct {
	key   string
	value json.RawMessage
}

// topLevel splits the document into its keys, in order, refusing
// duplicates (which YAML and JSON decoders would resolve silently, each
// their own way).
func topLevel(data []byte) ([]field, error) {
	trimmed := bytes.TrimSpace(data)
	js := trimmed
	// JSON files go to the JSON decoder directly: YAML rejects the tabs a
	// pretty-printed JSON file may be indented with.
	if len(trimmed) == 0 || trimmed[0] != '{' || !json.Valid(trimmed) {
		var err error
		js, err = yaml.YAMLToJSONStrict(data)
		if err != nil {
			return nil, fmt.Errorf("the config is not valid YAML or JSON: %w", err)
		}
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil, nil // an empty file, or one of comments only
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("the config is not valid JSON: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("the config must be a mapping of keys (%s) to values, got %s", strings.Join(knownKeys, ", "), describeToken(tok))
	}
	var fields []field
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("the config is not valid JSON: %w", err)
		}
		key, _ := tok.(string) // object keys are always strings
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("the config is not valid JSON: %s: %w", key, err)
		}
		if seen[key] {
			return nil, fmt.Errorf("%s: the key appears more than once", key)
		}
		seen[key] = true
		fields = append(fields, field{key, v})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, fmt.Errorf("the config is not valid JSON: %w", err)
	}
	return fields, nil
}

func describeToken(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '[' {
			return "a list"
		}
	case string:
		return fmt.Sprintf("the string %q", v)
	case bool:
		return fmt.Sprintf("%t", v)
	case json.Number, float64:
		return fmt.Sprintf("the number %v", v)
	}
	return fmt.Sprintf("%v", tok)
}

// describe says what a JSON value is, for "must be X, got Y" messages.
func describe(v json.RawMessage) string {
	t := bytes.TrimSpace(v)
	if len(t) == 0 {
		return "nothing"
	}
	switch t[0] {
	case '"':
		return "the string " + truncate(string(t))
	case '[':
		return "a list"
	case '{':
		return "a mapping"
	case 't', 'f':
		return string(t)
	case 'n':
		return "null"
	}
	return "the number " + truncate(string(t))
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:61] + "..."
	}
	return s
}

func unknownKey(key string) error {
	for _, k := range knownKeys {
		if strings.EqualFold(k, key) {
			return fmt.Errorf("unknown key %q: did you mean %q? (keys are case-sensitive)", key, k)
		}
	}
	return fmt.Errorf("unknown key %q: the keys are %s", key, strings.Join(knownKeys, ", "))
}

func parseCIDRList(v json.RawMessage) ([]netip.Prefix, error) {
	if bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
		// ip-masq-agent decodes `nonMasqueradeCIDRs:` with nothing after
		// it as an empty list, not as "use the defaults".
		return []netip.Prefix{}, nil
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(v, &raw); err != nil {
		return nil, fmt.Errorf("%s: must be a list of CIDR strings, got %s", keyNonMasqueradeCIDRs, describe(v))
	}
	out := make([]netip.Prefix, 0, len(raw))
	var errs []error
	bad := 0
	for i, r := range raw {
		var s string
		var err error
		if json.Unmarshal(r, &s) != nil {
			err = fmt.Errorf("%s[%d]: must be a CIDR string, got %s", keyNonMasqueradeCIDRs, i, describe(r))
		} else {
			var p netip.Prefix
			if p, err = parseCIDR(s); err == nil {
				out = append(out, p)
				continue
			}
			err = fmt.Errorf("%s[%d]: %w", keyNonMasqueradeCIDRs, i, err)
		}
		if bad++; bad <= maxReported {
			errs = append(errs, err)
		}
	}
	if bad > maxReported {
		errs = append(errs, fmt.Errorf("%s: and %d more invalid entries", keyNonMasqueradeCIDRs, bad-maxReported))
	}
	return out, errors.Join(errs...)
}

// parseCIDR validates one entry the way ip-masq-agent does (its messages
// for unparsable and unaligned CIDRs), and also refuses what it would
// have misread: IPv4-mapped IPv6 prefixes, which belong to neither
// family's table.
func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("CIDR %q could not be parsed, %w", s, err)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("CIDR %q is an IPv4-mapped IPv6 prefix, which is of neither family: write the IPv4 CIDR %s instead", s, mappedAsIPv4(p))
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("CIDR %q is not aligned to a CIDR block, ip: %q network: %q", s, p.Addr().String(), m.String())
	}
	return p, nil
}

func mappedAsIPv4(p netip.Prefix) string {
	bits := max(p.Bits()-96, 0)
	return netip.PrefixFrom(p.Addr().Unmap(), bits).Masked().String()
}

func parseLimit(v json.RawMessage) (int, error) {
	var n int
	if err := json.Unmarshal(v, &n); err != nil || n < 0 {
		return -1, fmt.Errorf("%s: must be a non-negative whole number, got %s", keyCIDRLimit, describe(v))
	}
	return n, nil
}

func parseBool(key string, v json.RawMessage, dst *bool) error {
	if bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
		return nil // as encoding/json: null leaves the default
	}
	if err := json.Unmarshal(v, dst); err != nil {
		return fmt.Errorf("%s: must be true or false, got %s", key, describe(v))
	}
	return nil
}

func parseInterval(v json.RawMessage, dst *time.Duration) error {
	var s string
	if err := json.Unmarshal(v, &s); err != nil || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
		return fmt.Errorf("%s: must be a duration string such as \"60s\" or \"1m30s\", got %s", keyResyncInterval, describe(v))
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%s: %w", keyResyncInterval, err)
	}
	if d <= 0 {
		return fmt.Errorf("%s: must be positive, got %q", keyResyncInterval, s)
	}
	if d < MinResyncInterval {
		return fmt.Errorf("%s: must be at least %s, got %q: a shorter interval keeps a core busy re-reading the file and the tables", keyResyncInterval, MinResyncInterval, s)
	}
	*dst = d
	return nil
}
