package alloc

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"lukechampine.com/uint128"
)

var ctx = context.Background()

func mustServiceRange(t testing.TB, cidr string, opts ServiceRangeOptions) *ServiceRange {
	t.Helper()
	r, err := NewServiceRange(netip.MustParsePrefix(cidr), opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestServiceRangeStaticBand(t *testing.T) {
	// KEP-3070: min(max(16, size/16), 256), none for 16 addresses or fewer.
	for cidr, want := range map[string]uint64{
		"10.0.0.0/29": 0, "10.0.0.0/28": 0, "10.0.0.0/27": 16, "10.0.0.0/24": 16,
		"10.0.0.0/23": 32, "10.0.0.0/20": 256, "10.0.0.0/16": 256,
		"fd00::/124": 0, "fd00::/120": 16, "fd00::/112": 256, "fd00::/64": 256,
	} {
		if got := staticBandSize(netip.MustParsePrefix(cidr)); !got.Equals64(want) {
			t.Errorf("static band of %s = %s, want %d", cidr, got, want)
		}
	}
}

func TestServiceRangeAllocate(t *testing.T) {
	tests := []struct {
		name    string
		cidr    string
		primary bool
		ip      string
		wantErr string
	}{
		{name: "an address of the static band", cidr: "10.96.0.0/16", ip: "10.96.0.10"},
		{name: "an address of the dynamic band", cidr: "10.96.0.0/16", ip: "10.96.200.7"},
		{name: "the last IPv4 address before broadcast", cidr: "10.96.0.0/16", ip: "10.96.255.254"},
		{name: "the last IPv6 address is usable", cidr: "fd00::/108", ip: "fd00::f:ffff"},
		{name: "the first usable address of a secondary range", cidr: "fd00::/108", ip: "fd00::1"},
		{name: "an address of a /64", cidr: "fd00:1::/64", ip: "fd00:1::ffff:ffff:ffff:ffff"},
		{name: "the IPv4 network address", cidr: "10.96.0.0/16", ip: "10.96.0.0",
			wantErr: "the provided IP (10.96.0.0) is not in the valid range. The range of valid IPs is 10.96.0.0/16 (it is the network address)"},
		{name: "the IPv4 broadcast address", cidr: "10.96.0.0/16", ip: "10.96.255.255",
			wantErr: "the provided IP (10.96.255.255) is not in the valid range. The range of valid IPs is 10.96.0.0/16 (it is the broadcast address)"},
		{name: "the IPv6 network address", cidr: "fd00::/108", ip: "fd00::",
			wantErr: "the provided IP (fd00::) is not in the valid range. The range of valid IPs is fd00::/108 (it is the network address)"},
		{name: "outside the range", cidr: "10.96.0.0/16", ip: "10.97.0.1",
			wantErr: "the provided IP (10.97.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/16"},
		{name: "the other family", cidr: "10.96.0.0/16", ip: "fd00::1",
			wantErr: "the provided IP (fd00::1) is not in the valid range. The range of valid IPs is 10.96.0.0/16"},
		{name: "the kubernetes service's address in the primary range", cidr: "10.96.0.0/16", primary: true, ip: "10.96.0.1",
			wantErr: "the provided IP (10.96.0.1) is reserved for the kubernetes service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustServiceRange(t, tt.cidr, ServiceRangeOptions{Primary: tt.primary})
			ip := netip.MustParseAddr(tt.ip)
			err := r.Allocate(ctx, ip)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Allocate(%s) error = %v, want %q", ip, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Allocate(%s): %v", ip, err)
			}
			if !r.Has(ip) {
				t.Fatalf("Has(%s) = false after Allocate", ip)
			}
			if err := r.Allocate(ctx, ip); !errors.Is(err, ErrAllocated) || err.Error() != "provided IP is already allocated" {
				t.Fatalf("second Allocate(%s) error = %v, want %q", ip, err, ErrAllocated)
			}
			if err := r.Release(ctx, ip); err != nil || r.Has(ip) {
				t.Fatalf("Release(%s) = %v, Has = %v", ip, err, r.Has(ip))
			}
			if err := r.Release(ctx, ip); err != nil {
				t.Fatalf("releasing a free address: %v", err)
			}
		})
	}
}

func TestServiceRangeKubernetesIP(t *testing.T) {
	for cidr, want := range map[string]string{"10.96.0.0/16": "10.96.0.1", "fd00:10:96::/108": "fd00:10:96::1"} {
		r := mustServiceRange(t, cidr, ServiceRangeOptions{Primary: true})
		if got := r.KubernetesServiceIP().String(); got != want {
			t.Errorf("%s: KubernetesServiceIP = %s, want %s", cidr, got, want)
		}
		if !r.Has(r.KubernetesServiceIP()) || r.Used() != 1 {
			t.Errorf("%s: the reserved address is not held (Used %d)", cidr, r.Used())
		}
		if err := r.Release(ctx, r.KubernetesServiceIP()); err != nil || !r.Has(r.KubernetesServiceIP()) {
			t.Errorf("%s: Release of the reserved address freed it (%v)", cidr, err)
		}
	}
}

// The dynamic band is used first; the static band only once it is full, and
// neither ever yields network, broadcast or the reserved address.
func TestServiceRangeAllocateNextBands(t *testing.T) {
	r := mustServiceRange(t, "10.0.0.0/24", ServiceRangeOptions{Primary: true})
	// 254 usable, 16 in the static band, 1 of them reserved.
	seen := map[netip.Addr]bool{}
	for i := 0; i < 254-16; i++ {
		ip, err := r.AllocateNext(ctx)
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if seen[ip] {
			t.Fatalf("%s handed out twice", ip)
		}
		seen[ip] = true
		if ip.As4()[3] <= 16 {
			t.Fatalf("allocation %d came from the static band (%s) while the dynamic band had room", i, ip)
		}
	}
	for i := 0; i < 15; i++ {
		ip, err := r.AllocateNext(ctx)
		if err != nil {
			t.Fatalf("static allocation %d: %v", i, err)
		}
		if last := ip.As4()[3]; last < 2 || last > 16 || seen[ip] {
			t.Fatalf("static-band allocation gave %s", ip)
		}
		seen[ip] = true
	}
	_, err := r.AllocateNext(ctx)
	if !errors.Is(err, ErrFull) || err.Error() != "range is full: all 254 usable addresses of 10.0.0.0/24 are allocated" {
		t.Fatalf("AllocateNext on a full range: %v", err)
	}
	if !r.Free().IsZero() || r.Used() != 254 {
		t.Fatalf("full range: Free %s Used %d", r.Free(), r.Used())
	}
}

func TestServiceRangeSmallRangeHasNoStaticBand(t *testing.T) {
	r := mustServiceRange(t, "fd00::/125", ServiceRangeOptions{})
	// 7 usable: fd00::1 .. fd00::7, the last address included.
	got := map[string]bool{}
	for i := 0; i < 7; i++ {
		ip, err := r.AllocateNext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got[ip.String()] = true
	}
	for _, want := range []string{"fd00::1", "fd00::7"} {
		if !got[want] {
			t.Errorf("%s was never handed out; got %v", want, got)
		}
	}
	if _, err := r.AllocateNext(ctx); !errors.Is(err, ErrFull) {
		t.Fatalf("want ErrFull, got %v", err)
	}
}

func TestServiceRangeSizes(t *testing.T) {
	for cidr, want := range map[string]string{
		"10.96.0.0/16": "65534", "10.0.0.0/29": "6",
		"fd00::/108": "1048575", "fd00::/64": "18446744073709551615",
	} {
		r := mustServiceRange(t, cidr, ServiceRangeOptions{})
		if got := r.Size().String(); got != want {
			t.Errorf("Size of %s = %s, want %s", cidr, got, want)
		}
		if !r.Free().Equals(r.Size()) {
			t.Errorf("Free of empty %s = %s", cidr, r.Free())
		}
	}
	if _, err := NewServiceRange(netip.MustParsePrefix("fd00::/48"), ServiceRangeOptions{}); err == nil {
		t.Error("a /48 service range was accepted")
	}
	if _, err := NewServiceRange(netip.MustParsePrefix("10.0.0.0/30"), ServiceRangeOptions{}); err == nil {
		t.Error("a /30 service range was accepted")
	}
}

// A /64 costs nothing until used and hands out addresses across all of it.
func TestServiceRangeIPv6Slash64(t *testing.T) {
	r := mustServiceRange(t, "fd00:1:2:3::/64", ServiceRangeOptions{Primary: true})
	high := 0
	for i := 0; i < 1000; i++ {
		ip, err := r.AllocateNext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		off := ip.As16()
		if off[8] >= 0x80 {
			high++
		}
	}
	// Uniform over the range: about half fall in the upper half.
	if high < 400 || high > 600 {
		t.Fatalf("%d of 1000 addresses in the upper half of the /64", high)
	}
	if got := r.Free().Add64(r.Used()); !got.Equals(r.Size()) {
		t.Fatalf("Used+Free = %s, Size %s", got, r.Size())
	}
	if !r.Size().Equals(uint128.From64(^uint64(0))) {
		t.Fatalf("Size = %s", r.Size())
	}
}
