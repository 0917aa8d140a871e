package core

import (
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestIPFamilyRoundTripsBesideInlineSpec(t *testing.T) {
	in := []byte(`{"metadata":{"name":"a"},"spec":{"ipFamily":"IPv6","ports":[{"port":80}],"ipFamilies":["IPv6"]}}`)
	var svc Service
	if err := json.Unmarshal(in, &svc); err != nil {
		t.Fatal(err)
	}
	if svc.Spec.IPFamily == nil || *svc.Spec.IPFamily != corev1.IPv6Protocol || len(svc.Spec.Ports) != 1 || svc.Spec.IPFamilies[0] != corev1.IPv6Protocol {
		t.Fatalf("decoded %+v", svc.Spec)
	}
	cp := svc.DeepCopy()
	*svc.Spec.IPFamily = corev1.IPv4Protocol
	if *cp.Spec.IPFamily != corev1.IPv6Protocol {
		t.Fatal("DeepCopy shares ipFamily")
	}
	out, err := json.Marshal(cp)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]map[string]any
	if err := json.Unmarshal(out, &back); err != nil {
		t.Fatal(err)
	}
	if back["spec"]["ipFamily"] != "IPv6" || back["spec"]["ports"] == nil {
		t.Fatalf("encoded %s", out)
	}
	if v1 := cp.ToV1(); v1.Spec.IPFamilies[0] != corev1.IPv6Protocol || FromV1(v1).Spec.IPFamily != nil {
		t.Fatal("conversion lost or invented fields")
	}
}

func TestProtobufRoundTripKeepsV1Fields(t *testing.T) {
	fam := corev1.IPv6Protocol
	in := &Service{Spec: ServiceSpec{IPFamily: &fam}}
	in.Name = "p"
	in.Spec.ClusterIPs = []string{"fd00::5"}
	in.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
	data, err := in.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var out Service
	if err := out.Unmarshal(data); err != nil {
		t.Fatal(err)
	}
	if out.Name != "p" || out.Spec.ClusterIPs[0] != "fd00::5" || out.Spec.IPFamily != nil {
		t.Fatalf("round trip gave %+v", out)
	}
}
