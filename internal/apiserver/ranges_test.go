package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/duet-net/duet/internal/apis/core"
	"github.com/duet-net/duet/internal/etcdstore/etcdtest"
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
		{"IPv6 dropped from both", rec(v46, p46), rec(v4, p4), ""},
		{"IPv4 dropped from an IPv6-primary cluster", rec(v64, p64), rec(v6, "fd00:244::/56"), ""},
		{"service secondary dropped alone, as it may be appended alone", rec(v46, p46), rec(v4, p46), ""},
		{"pod secondary dropped alone", rec(v46, p46), rec(v46, p4), ""},
		{"secondary dropped and the primary resized", rec(v46, p46), rec("10.96.0.0/12", p4), ""},
		{"primary dropped, secondary kept", rec(v46, p46), rec(v6, p46), "--service-cluster-ip-range: the primary family cannot change"},
		{"pod primary dropped, secondary kept", rec(v46, p46), rec(v46, "fd00:244::/56"), "--cluster-cidr: the primary family cannot change"},
		{"pod CIDRs dropped", rec(v4, p4), rec(v4, ""), "--cluster-cidr: the cluster ran with"},
		{"every pod CIDR of a dual-stack cluster dropped", rec(v46, p46), rec(v46, ""), "--cluster-cidr: the cluster ran with"},
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

// A restart that drops the IPv6 service range is refused while a Service
// needs IPv6, naming it and the field; Duet's kube-dns and headless
// Services without a selector (of any family on any cluster) do not count.
// Once the blockers are gone the same restart records the smaller ranges.
func TestRecordRangesRefusesDroppingAFamilyServicesNeed(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	dual := &Config{ServiceRanges: mustPrefixes("10.96.0.0/16", "fd00:96::/108"), ClusterCIDRs: netaddr.ClusterCIDRs{CIDRs: mustPrefixes("10.244.0.0/16", "fd00:244::/56")}}
	v4 := &Config{ServiceRanges: mustPrefixes("10.96.0.0/16"), ClusterCIDRs: netaddr.ClusterCIDRs{CIDRs: mustPrefixes("10.244.0.0/16")}}
	if err := recordRanges(ctx, srv.Endpoints, dual); err != nil {
		t.Fatal(err)
	}
	jsonCodec := Codecs.LegacyCodec(corev1.SchemeGroupVersion)
	protoCodec, err := protobufStorageCodec([]schema.GroupVersion{corev1.SchemeGroupVersion})
	if err != nil {
		t.Fatal(err)
	}
	put := func(codec runtime.Codec, ns, name string, policy corev1.IPFamilyPolicy, fams []corev1.IPFamily, headless, selector bool) {
		t.Helper()
		svc := &core.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		svc.Spec.IPFamilyPolicy, svc.Spec.IPFamilies = &policy, fams
		if headless {
			svc.Spec.ClusterIP, svc.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
		}
		if selector {
			svc.Spec.Selector = map[string]string{"app": name}
		}
		var buf bytes.Buffer
		if err := codec.Encode(svc, &buf); err != nil {
			t.Fatal(err)
		}
		if _, err := srv.Client.Put(ctx, servicesPrefix+ns+"/"+name, buf.String()); err != nil {
			t.Fatal(err)
		}
	}
	both := []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	put(jsonCodec, "kube-system", "kube-dns", corev1.IPFamilyPolicyRequireDualStack, both, false, false)
	put(jsonCodec, "default", "prefer", corev1.IPFamilyPolicyPreferDualStack, both, false, true)
	put(jsonCodec, "default", "headless-any", corev1.IPFamilyPolicyRequireDualStack, both, true, false)
	for i := range 7 {
		put(jsonCodec, "apps", fmt.Sprintf("require-%d", i), corev1.IPFamilyPolicyRequireDualStack, both, false, true)
	}
	put(protoCodec, "default", "v6-only", corev1.IPFamilyPolicySingleStack, []corev1.IPFamily{corev1.IPv6Protocol}, false, true)

	err = recordRanges(ctx, srv.Endpoints, v4)
	for _, want := range []string{
		"--service-cluster-ip-range: cannot drop the IPv6 range fd00:96::/108: 8 Service(s)",
		"spec.ipFamilyPolicy is RequireDualStack for apps/require-0, apps/require-1, apps/require-2, apps/require-3, apps/require-4 and 2 more",
		"spec.ipFamilies[0] is the dropped family for default/v6-only",
		"PreferDualStack",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("dropping IPv6 with blockers: %v, want an error containing %q", err, want)
		}
	}
	for _, exempt := range []string{"kube-dns", "prefer", "headless-any"} {
		if strings.Contains(err.Error(), exempt) {
			t.Errorf("the refusal names %s: %v", exempt, err)
		}
	}
	if got := readRanges(t, srv); len(got.ServiceRanges) != 2 {
		t.Fatalf("a refused restart recorded %v", got.ServiceRanges)
	}

	if _, err := srv.Client.Delete(ctx, servicesPrefix+"apps/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client.Delete(ctx, servicesPrefix+"default/v6-only"); err != nil {
		t.Fatal(err)
	}
	if err := recordRanges(ctx, srv.Endpoints, v4); err != nil {
		t.Fatalf("dropping IPv6 without blockers: %v", err)
	}
	if got := readRanges(t, srv); !slices.Equal(got.ServiceRanges, v4.ServiceRanges) || !slices.Equal(got.ClusterCIDRs, v4.ClusterCIDRs.CIDRs) {
		t.Fatalf("recorded %+v, want %v and %v", got, v4.ServiceRanges, v4.ClusterCIDRs.CIDRs)
	}
	// Dropping the pod family alone needs no check of the Services.
	if err := recordRanges(ctx, srv.Endpoints, dual); err != nil {
		t.Fatalf("adding IPv6 back: %v", err)
	}
	put(jsonCodec, "apps", "require-again", corev1.IPFamilyPolicyRequireDualStack, both, false, true)
	podsOnly := &Config{ServiceRanges: dual.ServiceRanges, ClusterCIDRs: v4.ClusterCIDRs}
	if err := recordRanges(ctx, srv.Endpoints, podsOnly); err != nil {
		t.Fatalf("dropping the IPv6 cluster CIDR only: %v", err)
	}
}

func mustPrefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

func readRanges(t *testing.T, srv *etcdtest.Server) rangesRecord {
	t.Helper()
	resp, err := srv.Client.Get(context.Background(), rangesKey)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("reading %s: %v", rangesKey, err)
	}
	var r rangesRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		t.Fatal(err)
	}
	return r
}
