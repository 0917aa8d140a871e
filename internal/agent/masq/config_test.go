package masq

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestParse(t *testing.T) {
	def := DefaultConfig()
	with := func(fn func(c *Config)) Config {
		c := DefaultConfig()
		fn(&c)
		return c
	}
	tests := []struct {
		name    string
		data    string
		want    Config
		wantErr []string // substrings, all of which the error must hold
	}{
		{name: "an empty file is the defaults", data: "", want: def},
		{name: "a file of comments only is the defaults", data: "# nothing here\n\n", want: def},
		{name: "an empty JSON object is the defaults", data: "{}", want: def},
		{name: "masqLinkLocal alone keeps the default CIDRs", data: "masqLinkLocal: true\n",
			want: with(func(c *Config) { c.MasqLinkLocal = true })},
		{name: "masqLinkLocalIPv6 alone keeps the default CIDRs", data: "masqLinkLocalIPv6: true",
			want: with(func(c *Config) { c.MasqLinkLocalIPv6 = true })},
		{name: "resyncInterval alone keeps the default CIDRs", data: `resyncInterval: 10s`,
			want: with(func(c *Config) { c.ResyncInterval = 10 * time.Second })},
		{name: "the shortest resyncInterval", data: `resyncInterval: 1s`,
			want: with(func(c *Config) { c.ResyncInterval = time.Second })},
		{name: "a null boolean keeps its default", data: "masqLinkLocal:\n", want: def},
		{name: "nonMasqueradeCIDRs replaces the default list, both families in one list",
			data: "nonMasqueradeCIDRs:\n  - 100.64.0.0/10\n  - 2001:db8::/32\n",
			want: with(func(c *Config) {
				c.NonMasqueradeCIDRs, c.DefaultNonMasquerade = prefixes("100.64.0.0/10", "2001:db8::/32"), false
			})},
		{name: "an empty nonMasqueradeCIDRs masquerades everything", data: "nonMasqueradeCIDRs: []",
			want: with(func(c *Config) { c.NonMasqueradeCIDRs, c.DefaultNonMasquerade = []netip.Prefix{}, false })},
		{name: "a null nonMasqueradeCIDRs is an empty list, as in ip-masq-agent", data: "nonMasqueradeCIDRs:\nmasqLinkLocal: true",
			want: with(func(c *Config) {
				c.NonMasqueradeCIDRs, c.DefaultNonMasquerade, c.MasqLinkLocal = []netip.Prefix{}, false, true
			})},
		{name: "overlapping and nested CIDRs are accepted as written", data: `nonMasqueradeCIDRs: [10.0.0.0/8, 10.1.0.0/16, 10.0.0.0/8]`,
			want: with(func(c *Config) {
				c.NonMasqueradeCIDRs, c.DefaultNonMasquerade = prefixes("10.0.0.0/8", "10.1.0.0/16", "10.0.0.0/8"), false
			})},
		{name: "the ip-masq-agent README's example", data: "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\ncidrLimit: 64\nmasqLinkLocal: false\nresyncInterval: 60s\n",
			want: with(func(c *Config) { c.NonMasqueradeCIDRs, c.DefaultNonMasquerade = prefixes("10.0.0.0/8"), false })},
		{name: "JSON, indented with tabs", data: "{\n\t\"nonMasqueradeCIDRs\": [\"192.168.0.0/16\", \"fd00::/8\"],\n\t\"masqLinkLocalIPv6\": true,\n\t\"resyncInterval\": \"1m30s\"\n}\n",
			want: with(func(c *Config) {
				c.NonMasqueradeCIDRs, c.DefaultNonMasquerade = prefixes("192.168.0.0/16", "fd00::/8"), false
				c.MasqLinkLocalIPv6, c.ResyncInterval = true, 90*time.Second
			})},
		{name: "a YAML flow mapping that is not JSON", data: `{masqLinkLocal: true, nonMasqueradeCIDRs: [10.0.0.0/8]}`,
			want: with(func(c *Config) {
				c.NonMasqueradeCIDRs, c.DefaultNonMasquerade, c.MasqLinkLocal = prefixes("10.0.0.0/8"), false, true
			})},
		{name: "YAML 1.1 booleans, as ip-masq-agent reads them", data: "masqLinkLocal: yes",
			want: with(func(c *Config) { c.MasqLinkLocal = true })},
		{name: "cidrLimit is honoured when the list fits", data: "cidrLimit: 1\nnonMasqueradeCIDRs: [10.0.0.0/8]",
			want: with(func(c *Config) { c.NonMasqueradeCIDRs, c.DefaultNonMasquerade = prefixes("10.0.0.0/8"), false })},

		{name: "not YAML", data: "nonMasqueradeCIDRs: [10.0.0.0/8", wantErr: []string{"the config is not valid YAML or JSON"}},
		{name: "a list instead of a mapping", data: "- 10.0.0.0/8", wantErr: []string{"the config must be a mapping of keys", "got a list"}},
		{name: "a bare string instead of a mapping", data: "10.0.0.0/8", wantErr: []string{"the config must be a mapping of keys", `got the string "10.0.0.0/8"`}},
		{name: "a misspelt key is refused, not ignored", data: "nonMasqueradeCIDR: [10.0.0.0/8]",
			wantErr: []string{`unknown key "nonMasqueradeCIDR": the keys are nonMasqueradeCIDRs, cidrLimit, masqLinkLocal, masqLinkLocalIPv6, resyncInterval`}},
		{name: "a key in the wrong case suggests the right one", data: "MasqLinkLocal: true",
			wantErr: []string{`unknown key "MasqLinkLocal": did you mean "masqLinkLocal"?`}},
		{name: "a duplicate YAML key", data: "masqLinkLocal: true\nmasqLinkLocal: false", wantErr: []string{`"masqLinkLocal" already set`}},
		{name: "a duplicate JSON key", data: `{"masqLinkLocal": true, "masqLinkLocal": false}`, wantErr: []string{"masqLinkLocal: the key appears more than once"}},
		{name: "a CIDR with host bits, in ip-masq-agent's words", data: "nonMasqueradeCIDRs: [10.0.0.0/8, 10.0.0.1/8]",
			wantErr: []string{`nonMasqueradeCIDRs[1]: CIDR "10.0.0.1/8" is not aligned to a CIDR block, ip: "10.0.0.1" network: "10.0.0.0/8"`}},
		{name: "an IPv6 CIDR with host bits", data: `nonMasqueradeCIDRs: ["fd00::1/64"]`,
			wantErr: []string{`nonMasqueradeCIDRs[0]: CIDR "fd00::1/64" is not aligned to a CIDR block, ip: "fd00::1" network: "fd00::/64"`}},
		{name: "an unparsable CIDR, in ip-masq-agent's words", data: "nonMasqueradeCIDRs: [foo]",
			wantErr: []string{`nonMasqueradeCIDRs[0]: CIDR "foo" could not be parsed, `}},
		{name: "an address without a prefix length", data: "nonMasqueradeCIDRs: [10.1.2.3]",
			wantErr: []string{`nonMasqueradeCIDRs[0]: CIDR "10.1.2.3" could not be parsed, `, "no '/'"}},
		{name: "a prefix length out of range", data: "nonMasqueradeCIDRs: [10.0.0.0/33]",
			wantErr: []string{`nonMasqueradeCIDRs[0]: CIDR "10.0.0.0/33" could not be parsed, `, "out of range"}},
		{name: "an IPv4-mapped IPv6 prefix is of neither family", data: `nonMasqueradeCIDRs: ["::ffff:10.0.0.0/104"]`,
			wantErr: []string{`nonMasqueradeCIDRs[0]: CIDR "::ffff:10.0.0.0/104" is an IPv4-mapped IPv6 prefix`, "write the IPv4 CIDR 10.0.0.0/8 instead"}},
		{name: "a zone is not part of a CIDR", data: `nonMasqueradeCIDRs: ["fe80::%eth0/64"]`,
			wantErr: []string{`nonMasqueradeCIDRs[0]: CIDR "fe80::%eth0/64" could not be parsed`}},
		{name: "a CIDR that is not a string", data: "nonMasqueradeCIDRs: [42]",
			wantErr: []string{"nonMasqueradeCIDRs[0]: must be a CIDR string, got the number 42"}},
		{name: "a single CIDR instead of a list", data: "nonMasqueradeCIDRs: 10.0.0.0/8",
			wantErr: []string{`nonMasqueradeCIDRs: must be a list of CIDR strings, got the string "10.0.0.0/8"`}},
		{name: "a quoted boolean", data: `masqLinkLocal: "true"`, wantErr: []string{`masqLinkLocal: must be true or false, got the string "true"`}},
		{name: "a number for masqLinkLocalIPv6", data: `masqLinkLocalIPv6: 1`, wantErr: []string{`masqLinkLocalIPv6: must be true or false, got the number 1`}},
		{name: "a resyncInterval without a unit", data: "resyncInterval: 60",
			wantErr: []string{`resyncInterval: must be a duration string such as "60s" or "1m30s", got the number 60`}},
		{name: "a negative resyncInterval", data: "resyncInterval: -5s", wantErr: []string{`resyncInterval: must be positive, got "-5s"`}},
		{name: "a zero resyncInterval would spin", data: "resyncInterval: 0s", wantErr: []string{`resyncInterval: must be positive, got "0s"`}},
		{name: "a nanosecond resyncInterval would keep a core busy", data: "resyncInterval: 1ns",
			wantErr: []string{`resyncInterval: must be at least 1s, got "1ns"`}},
		{name: "a resyncInterval just under a second", data: "resyncInterval: 999ms",
			wantErr: []string{`resyncInterval: must be at least 1s, got "999ms"`}},
		{name: "a null resyncInterval", data: "resyncInterval:", wantErr: []string{"resyncInterval: must be a duration string", "got null"}},
		{name: "an unparsable resyncInterval", data: "resyncInterval: soon", wantErr: []string{`resyncInterval: time: invalid duration "soon"`}},
		{name: "more CIDRs than cidrLimit, in ip-masq-agent's words", data: "cidrLimit: 1\nnonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12]",
			wantErr: []string{"cidrLimit: the daemon can only accept up to 1 CIDRs (excluding link-local), but got 2 CIDRs (excluding link local)"}},
		{name: "a negative cidrLimit", data: "cidrLimit: -1", wantErr: []string{"cidrLimit: must be a non-negative whole number, got the number -1"}},
		{name: "every problem is reported at once", data: "nonMasqueradeCIDRs: [10.0.0.1/8]\nmasqLinkLocal: maybe\nresyncInterval: -1s\nfoo: bar",
			wantErr: []string{"nonMasqueradeCIDRs[0]: CIDR", "masqLinkLocal: must be true or false", "resyncInterval: must be positive", `unknown key "foo"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.data))
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Parse(%q) = %+v, want an error", tt.data, got)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("Parse(%q) error:\n%v\nwant it to contain %q", tt.data, err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.data, err)
			}
			if !got.Equal(tt.want) {
				t.Fatalf("Parse(%q) =\n%+v\nwant\n%+v", tt.data, got, tt.want)
			}
		})
	}
}

func TestParseReportsAFewBadEntriesOfMany(t *testing.T) {
	var sb strings.Builder
	sb.WriteString("nonMasqueradeCIDRs:\n")
	for i := range 500 {
		fmt.Fprintf(&sb, "- 10.0.%d.1/24\n", i%256)
	}
	_, err := Parse([]byte(sb.String()))
	if err == nil {
		t.Fatal("Parse accepted 500 unaligned CIDRs")
	}
	if n := strings.Count(err.Error(), "is not aligned"); n != maxReported {
		t.Errorf("the error lists %d entries, want %d:\n%v", n, maxReported, err)
	}
	if !strings.Contains(err.Error(), "and 490 more invalid entries") {
		t.Errorf("the error does not say how many more:\n%v", err)
	}
}

func TestParseTenThousandCIDRs(t *testing.T) {
	data := bigConfig(10000)
	c, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.NonMasqueradeCIDRs) != 10000 {
		t.Fatalf("parsed %d CIDRs, want 10000 (there is no cidrLimit unless the file sets one)", len(c.NonMasqueradeCIDRs))
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	t.Run("a missing file is the defaults", func(t *testing.T) {
		c, err := Load(filepath.Join(dir, "absent"))
		if err != nil || !c.Equal(DefaultConfig()) {
			t.Fatalf("Load(absent) = %+v, %v; want the defaults", c, err)
		}
	})
	t.Run("a bad file names the path and says the rules stay", func(t *testing.T) {
		p := filepath.Join(dir, "bad")
		if err := os.WriteFile(p, []byte("resyncInterval: -1s"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(p)
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "keeping the rules in force") || !strings.Contains(err.Error(), "resyncInterval: must be positive") {
			t.Fatalf("Load(bad) error = %v", err)
		}
	})
	t.Run("a directory is an error, not the defaults", func(t *testing.T) {
		if _, err := Load(dir); err == nil {
			t.Fatal("Load(a directory) succeeded")
		}
	})
}

func TestRules(t *testing.T) {
	pods := prefixes("10.244.0.0/16", "fd00:10:244::/56")
	services := prefixes("10.96.0.0/16", "fd00:10:96::/108")
	linkLocal := prefixes("169.254.0.0/16", "fe80::/10")
	tests := []struct {
		name      string
		config    string
		wantNever []netip.Prefix
		wantNon   []netip.Prefix
	}{
		{name: "defaults: RFC 1918, the IPv6 service CIDRs and link-local keep their source",
			wantNever: pods,
			wantNon:   slices.Concat(DefaultNonMasqueradeCIDRs, prefixes("fd00:10:96::/108"), linkLocal)},
		{name: "a configured list replaces the defaults, IPv6 service CIDRs included",
			config:    "nonMasqueradeCIDRs: [100.64.0.0/10]",
			wantNever: pods,
			wantNon:   slices.Concat(prefixes("100.64.0.0/10"), linkLocal)},
		{name: "an empty list masquerades all but link-local, and never the pod CIDRs",
			config:    "nonMasqueradeCIDRs: []",
			wantNever: pods,
			wantNon:   linkLocal},
		{name: "masqLinkLocal drops the IPv4 link-local range",
			config:    "nonMasqueradeCIDRs: []\nmasqLinkLocal: true",
			wantNever: pods,
			wantNon:   prefixes("fe80::/10")},
		{name: "masqLinkLocalIPv6 drops the IPv6 link-local range",
			config:    "nonMasqueradeCIDRs: []\nmasqLinkLocal: true\nmasqLinkLocalIPv6: true",
			wantNever: pods,
			wantNon:   []netip.Prefix{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.config))
			if err != nil {
				t.Fatal(err)
			}
			r := c.Rules(pods, services)
			if !slices.Equal(r.NeverMasquerade, tt.wantNever) {
				t.Errorf("NeverMasquerade = %v, want %v", r.NeverMasquerade, tt.wantNever)
			}
			if !slices.Equal(r.NonMasquerade, tt.wantNon) {
				t.Errorf("NonMasquerade = %v, want %v", r.NonMasquerade, tt.wantNon)
			}
		})
	}
}

// bigConfig is a file of n distinct CIDRs, half of each family, not
// adjacent so that merging keeps them all.
func bigConfig(n int) []byte {
	var sb strings.Builder
	sb.WriteString("nonMasqueradeCIDRs:\n")
	for _, p := range bigPrefixes(n) {
		fmt.Fprintf(&sb, "- %s\n", p)
	}
	return []byte(sb.String())
}

func bigPrefixes(n int) []netip.Prefix {
	out := make([]netip.Prefix, 0, n)
	for i := range n {
		if i%2 == 0 {
			j := i / 2
			out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + j>>8), byte(j), 0}), 25))
		} else {
			j := i / 2
			out = append(out, netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(j >> 8), byte(j), 0, 0}), 64))
		}
	}
	return out
}
