package ipam

import (
	"testing"

	"github.com/duet-net/duet/internal/alloc"
)

// FuzzParse checks that no input crashes the parser and that whatever it
// accepts is a configuration the allocator can work with: every subnet a
// pod subnet (CheckPodSubnet), every range inside its subnet with an
// address to hand out, no overlaps.
func FuzzParse(f *testing.F) {
	f.Add([]byte(conf(`{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]]}`)), "")
	f.Add([]byte(conf(`{"podCIDRs":["fd00:10:244:2::/64","10.244.2.0/24"],"cooldown":"30s"}`)), "")
	f.Add([]byte(conf(`{"ranges":[[{"subnet":"10.0.0.0/29","rangeStart":"10.0.0.0","rangeEnd":"10.0.0.7","gateway":"10.0.0.6"}]],"routes":[{"dst":"0.0.0.0/0","gw":"10.0.0.6"}]}`)), "IP=10.0.0.3")
	f.Add([]byte(conf(`{"ranges":[[{"subnet":"0.0.0.0/0"}],[{"subnet":"::/0"}]]}`)), "")
	f.Add([]byte(conf(`{"podCIDRs":["10.0.0.0/8","fe80::/64"]}`)), "")
	f.Fuzz(func(t *testing.T, stdin []byte, args string) {
		c, err := Parse(stdin, args)
		if err != nil {
			return
		}
		if c.Name == "" || len(c.RangeSets) == 0 || c.Cooldown < 0 {
			t.Fatalf("accepted an incomplete config: %+v", c)
		}
		for i, set := range c.RangeSets {
			if len(set) == 0 {
				t.Fatalf("set %d is empty", i)
			}
			for _, r := range set {
				if err := alloc.CheckPodSubnet(r.Subnet); err != nil || r.Subnet.Bits() < alloc.MinPodSubnetBits {
					t.Fatalf("accepted %s, which cannot be a pod subnet: %v", r.Subnet, err)
				}
				if r.Subnet.Masked() != r.Subnet || !r.Subnet.Contains(r.Start) || !r.Subnet.Contains(r.End) || !r.Subnet.Contains(r.Gateway) {
					t.Fatalf("range %s escapes its subnet", r)
				}
				if r.Start.Compare(r.End) > 0 || r.Family() != set.Family() {
					t.Fatalf("range %s is inverted or of the wrong family", r)
				}
				a, ok := r.FirstUsable(r.Start)
				if !ok || !r.Usable(a) || a == r.Gateway {
					t.Fatalf("range %s has nothing to hand out", r)
				}
			}
			for j := 0; j < i; j++ {
				if _, _, ok := overlap(c.RangeSets[j], set); ok {
					t.Fatalf("sets %d and %d overlap", j, i)
				}
			}
		}
		for _, a := range c.Requested {
			found := false
			for _, s := range c.RangeSets {
				found = found || s.Contains(a)
			}
			if !found {
				t.Fatalf("requested %s outside every set", a)
			}
		}
	})
}
