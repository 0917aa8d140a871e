package ipam

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

const dualStack = `[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]]`

type pluginRun struct {
	t   *testing.T
	p   *Plugin
	out bytes.Buffer
	dir string
}

func newPluginRun(t *testing.T) *pluginRun {
	r := &pluginRun{t: t, dir: t.TempDir()}
	r.p = &Plugin{Now: func() time.Time { return t0 }, Stdout: &r.out}
	return r
}

func (r *pluginRun) stdin(version, ipam string, extra string) []byte {
	ipam = strings.Replace(ipam, "{", `{"dataDir":"`+r.dir+`",`, 1)
	return []byte(`{"cniVersion":"` + version + `","name":"pods","type":"bridge"` + extra + `,"ipam":` + ipam + `}`)
}

func args(id string, stdin []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: id, IfName: "eth0", Netns: "/run/netns/x", StdinData: stdin}
}

func (r *pluginRun) add(id string, stdin []byte) *current.Result {
	r.t.Helper()
	r.out.Reset()
	if err := r.p.Add(args(id, stdin)); err != nil {
		r.t.Fatalf("ADD %s: %v", id, err)
	}
	res, err := current.NewResult(r.out.Bytes())
	if err != nil {
		r.t.Fatalf("decoding %s: %v", r.out.String(), err)
	}
	return res.(*current.Result)
}

func TestPluginAddPrintsBothFamiliesWithGatewaysAndRoutes(t *testing.T) {
	r := newPluginRun(t)
	stdin := r.stdin("1.1.0", `{"type":"duet-ipam","podCIDRs":["fd00:10:244:2::/64","10.244.2.0/24"],"routes":[{"dst":"::/0"},{"dst":"0.0.0.0/0"}]}`, "")
	res := r.add("c1", stdin)
	var got []string
	for _, ip := range res.IPs {
		got = append(got, ip.Address.String()+" gw "+ip.Gateway.String())
	}
	if want := "fd00:10:244:2::2/64 gw fd00:10:244:2::1,10.244.2.2/24 gw 10.244.2.1"; strings.Join(got, ",") != want {
		t.Fatalf("IPs = %v, want %s (primary family first)", got, want)
	}
	if len(res.Routes) != 2 || res.Routes[0].Dst.String() != "::/0" {
		t.Fatalf("routes = %v", res.Routes)
	}
	if res.CNIVersion != "1.1.0" {
		t.Fatalf("version = %s", res.CNIVersion)
	}
}

func TestPluginAnswersInTheConfigsVersion(t *testing.T) {
	r := newPluginRun(t)
	r.out.Reset()
	if err := r.p.Add(args("c1", r.stdin("0.3.1", `{"ranges":`+dualStack+`}`, ""))); err != nil {
		t.Fatal(err)
	}
	var v struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Version string `json:"version"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(r.out.Bytes(), &v); err != nil || v.CNIVersion != "0.3.1" || len(v.IPs) != 2 || v.IPs[1].Version != "6" {
		t.Fatalf("0.3.1 result %s (%v)", r.out.String(), err)
	}
}

func TestPluginCheckComparesPrevResult(t *testing.T) {
	r := newPluginRun(t)
	stdin := r.stdin("1.0.0", `{"ranges":`+dualStack+`}`, "")
	res := r.add("c1", stdin)
	prev, _ := json.Marshal(res)
	if err := r.p.Check(args("c1", r.stdin("1.0.0", `{"ranges":`+dualStack+`}`, `,"prevResult":`+string(prev)))); err != nil {
		t.Fatalf("CHECK of a good attachment: %v", err)
	}
	res.IPs = res.IPs[:1]
	prev, _ = json.Marshal(res)
	err := r.p.Check(args("c1", r.stdin("1.0.0", `{"ranges":`+dualStack+`}`, `,"prevResult":`+string(prev))))
	if err == nil || !strings.Contains(err.Error(), "fd00:10:244:1::2 of container c1 interface eth0 is missing from prevResult") {
		t.Fatalf("CHECK with an address missing: %v", err)
	}
	var cniErr *types.Error
	if err := r.p.Check(args("c2", stdin)); !errors.As(err, &cniErr) || cniErr.Code != types.ErrUnknownContainer || !strings.Contains(cniErr.Msg, "network pods") {
		t.Fatalf("CHECK of an unknown container: %v", err)
	}
}

func TestPluginStatusIsCode50WhenARangeIsExhausted(t *testing.T) {
	r := newPluginRun(t)
	stdin := r.stdin("1.1.0", `{"ranges":[[{"subnet":"10.0.0.0/30"}],[{"subnet":"fd00::/64"}]]}`, "")
	if err := r.p.Status(args("", stdin)); err != nil {
		t.Fatalf("STATUS on an empty network: %v", err)
	}
	r.add("c1", stdin)
	var cniErr *types.Error
	err := r.p.Status(args("", stdin))
	if !errors.As(err, &cniErr) || cniErr.Code != 50 || !strings.Contains(cniErr.Msg, "10.0.0.0/30") {
		t.Fatalf("STATUS on a full network: %v", err)
	}
	if err := r.p.Add(args("c2", stdin)); err == nil || !strings.Contains(err.Error(), "range is full") {
		t.Fatalf("ADD on a full network: %v", err)
	}
}

func TestPluginGCAndDel(t *testing.T) {
	r := newPluginRun(t)
	stdin := r.stdin("1.1.0", `{"ranges":`+dualStack+`}`, "")
	r.add("c1", stdin)
	r.add("c2", stdin)
	gc := r.stdin("1.1.0", `{"ranges":`+dualStack+`}`, `,"cni.dev/valid-attachments":[{"containerID":"c2","ifname":"eth0"}]`)
	if err := r.p.GC(args("", gc)); err != nil {
		t.Fatal(err)
	}
	if err := r.p.Check(args("c1", stdin)); err == nil {
		t.Fatal("c1 survived GC")
	}
	if err := r.p.Check(args("c2", stdin)); err != nil {
		t.Fatalf("c2 lost its addresses to GC: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := r.p.Del(args("c2", stdin)); err != nil {
			t.Fatalf("DEL %d: %v", i, err)
		}
	}
	if err := r.p.Del(args("never-added", stdin)); err != nil {
		t.Fatalf("DEL of an unknown container: %v", err)
	}
}

func TestPluginConfigErrorsAreCode7(t *testing.T) {
	r := newPluginRun(t)
	var cniErr *types.Error
	err := r.p.Add(args("c1", r.stdin("1.1.0", `{"ranges":[[{"subnet":"10.0.0.1/24"}]]}`, "")))
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, "ipam.ranges[0][0].subnet") {
		t.Fatalf("got %v", err)
	}
}

// CNI 1.1 makes cni.dev/valid-attachments the runtime's duty on GC. A GC
// without it used to release every live reservation; it is refused as an
// invalid configuration and releases nothing, while an empty list still
// means "nothing is valid".
func TestPluginGCWithoutValidAttachmentsReleasesNothing(t *testing.T) {
	r := newPluginRun(t)
	stdin := r.stdin("1.1.0", `{"ranges":`+dualStack+`}`, "")
	r.add("c1", stdin)
	r.add("c2", stdin)
	for name, gc := range map[string][]byte{
		"no key":   stdin,
		"null key": r.stdin("1.1.0", `{"ranges":`+dualStack+`}`, `,"cni.dev/valid-attachments":null`),
	} {
		var cniErr *types.Error
		err := r.p.GC(args("", gc))
		if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, "cni.dev/valid-attachments") {
			t.Fatalf("%s: GC = %v, want error code 7 naming cni.dev/valid-attachments", name, err)
		}
		for _, id := range []string{"c1", "c2"} {
			if err := r.p.Check(args(id, stdin)); err != nil {
				t.Fatalf("%s: %s lost its addresses to a refused GC: %v", name, id, err)
			}
		}
	}
	empty := r.stdin("1.1.0", `{"ranges":`+dualStack+`}`, `,"cni.dev/valid-attachments":[]`)
	if err := r.p.GC(args("", empty)); err != nil {
		t.Fatalf("GC with an empty list: %v", err)
	}
	if err := r.p.Check(args("c1", stdin)); err == nil {
		t.Fatal("an empty cni.dev/valid-attachments kept c1")
	}
}
