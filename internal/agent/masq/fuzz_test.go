package masq

import (
	"fmt"
	"strings"
	"testing"
)

// FuzzParseConfig checks that Parse never panics, that what it accepts
// is usable (aligned prefixes of one family each, an interval of at least
// MinResyncInterval), and that writing an accepted config back out and
// parsing it again
// gives the same config. Seeds live in testdata/fuzz/FuzzParseConfig.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"",
		"nonMasqueradeCIDRs: [10.0.0.0/8, fd00::/8]\nmasqLinkLocal: true\nresyncInterval: 30s\n",
		`{"nonMasqueradeCIDRs": ["::ffff:10.0.0.0/104"], "cidrLimit": 1}`,
		"resyncInterval: -1ns",
		"resyncInterval: 999ms",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if c.ResyncInterval != 0 || c.NonMasqueradeCIDRs != nil {
				t.Fatalf("Parse returned a config with its error: %+v", c)
			}
			return
		}
		if c.ResyncInterval < MinResyncInterval {
			t.Fatalf("accepted resyncInterval %v", c.ResyncInterval)
		}
		for _, p := range c.NonMasqueradeCIDRs {
			if !p.IsValid() || p.Masked() != p || p.Addr().Is4In6() || p.Addr().Zone() != "" {
				t.Fatalf("accepted CIDR %v", p)
			}
		}
		again, err := Parse(format(c))
		if err != nil {
			t.Fatalf("re-parsing %q: %v", format(c), err)
		}
		if !again.Equal(c) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", c, again)
		}
	})
}

// format writes a config out in the file format.
func format(c Config) []byte {
	var sb strings.Builder
	if !c.DefaultNonMasquerade {
		sb.WriteString("nonMasqueradeCIDRs: [")
		for i, p := range c.NonMasqueradeCIDRs {
			if i > 0 {
				sb.WriteString(", ")
			}
			fmt.Fprintf(&sb, "%q", p.String())
		}
		sb.WriteString("]\n")
	}
	fmt.Fprintf(&sb, "masqLinkLocal: %t\nmasqLinkLocalIPv6: %t\nresyncInterval: %q\n", c.MasqLinkLocal, c.MasqLinkLocalIPv6, c.ResyncInterval.String())
	return []byte(sb.String())
}
