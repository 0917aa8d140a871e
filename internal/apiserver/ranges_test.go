package apiserver

import (
	"strings"
	"testing"

	"github.com/duet-net/duet/internal/netaddr"
)

func TestCheckRangeChange(t *testing.T) {
	rec := func(svc, pods string) rangesRecord {
		r := rangesRecord{}
		if svc != "" {
			r.ServiceRanges, _ = netaddr.ParseCIDRList("svc", svc)
		}
		if pods != "" {
			r.ClusterCIDRs, _ = netaddr.ParseCIDRList("pods", pods)
		}
		return r
	}
	v4, v6, v46, v64 := "10.96.0.0/16", "fd00:96::/108", "10.96.0.0/16,fd00:96::/108", "fd00:96::/108,10.96.0.0/16"
	p4, p46, p64 := "10.244.0.0/16", "10.244.0.0/16,fd00:244::/56", "fd00:244::/56,10.244.0.0/16"
	for _, tc := range []struct {
		name     string
		old, now rangesRecord
		err      string
	}{
		{"first start", rangesRecord{}, rec(v4, p4), ""},
		{"unchanged", rec(v46, p46), rec(v46, p46), ""},
		{"IPv6 appended", rec(v4, p4), rec(v46, p46), ""},
		{"IPv4 appended to IPv6", rec(v6, ""), rec(v64, ""), ""},
		{"pod CIDRs given for the first time", rec(v4, ""), rec(v4, p4), ""},
		{"primary range resized, same family", rec(v4, p4), rec("10.96.0.0/12", p4), ""},
		{"service primary family changed", rec(v46, p46), rec(v64, p46), "--service-cluster-ip-range: the primary family cannot change"},
		{"IPv4-only to IPv6-only", rec(v4, p4), rec(v6, p4), "--service-cluster-ip-range: the primary family cannot change"},
		{"pod primary family changed", rec(v46, p46), rec(v46, p64), "--cluster-cidr: the primary family cannot change"},
		{"secondary dropped", rec(v46, p46), rec(v4, p46), "--service-cluster-ip-range: the cluster ran dual-stack"},
		{"pod secondary dropped", rec(v46, p46), rec(v46, p4), "--cluster-cidr: the cluster ran dual-stack"},
		{"pod CIDRs dropped", rec(v4, p4), rec(v4, ""), "--cluster-cidr: the cluster ran with"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkRangeChange(tc.old, tc.now)
			if tc.err == "" && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}
