package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	duetns "github.com/duet-net/duet/internal/netns"
)

// referencePlugins is where Debian's containernetworking-plugins installs
// the reference plugins (bridge, host-local, ...).
const referencePlugins = "/usr/lib/cni"

// inNetns runs fn on a thread of its own that has joined the network
// namespace at path; plugins fn executes start there.
func inNetns(path string, fn func() error) error { return duetns.Do(path, fn) }

// ipIn runs ip -j in a namespace and decodes its output.
func ipIn(t *testing.T, ns string, v any, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns, "-j"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("decoding ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

type ipAddr struct {
	IfName   string `json:"ifname"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
		Scope     string `json:"scope"`
	} `json:"addr_info"`
}

// globalAddrs lists the global addresses in a namespace as "addr/len".
func globalAddrs(t *testing.T, ns string) []string {
	var links []ipAddr
	ipIn(t, ns, &links, "addr", "show")
	var out []string
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if a.Scope == "global" {
				out = append(out, fmt.Sprintf("%s %s/%d", l.IfName, a.Local, a.PrefixLen))
			}
		}
	}
	slices.Sort(out)
	return out
}

func defaultGateway(t *testing.T, ns, family string) string {
	var routes []struct {
		Dst     string `json:"dst"`
		Gateway string `json:"gateway"`
	}
	ipIn(t, ns, &routes, family, "route", "show", "default")
	if len(routes) != 1 {
		return ""
	}
	return routes[0].Gateway
}

// TestBridgeWithDuetIPAMThroughLibcni is how containerd, CRI-O, nerdctl or
// Nomad would use duet-ipam: libcni runs a conflist whose bridge plugin
// delegates to duet-ipam. The bridge lives in a "node" namespace and the
// pod in another, both made here; nothing touches the host's namespace.
func TestBridgeWithDuetIPAMThroughLibcni(t *testing.T) {
	if _, err := os.Stat(filepath.Join(referencePlugins, "bridge")); err != nil {
		t.Fatalf("the reference bridge plugin is missing (%v): apt-get install containernetworking-plugins (hack/install-deps.sh)", err)
	}
	node, nodePath := netns(t)
	pod, podPath := netns(t)
	for _, ns := range []string{node, pod} {
		// No duplicate address detection: the bridge plugin waits for it.
		out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
			"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0").CombinedOutput()
		if err != nil {
			t.Fatalf("sysctl in %s: %v: %s", ns, err, out)
		}
	}
	dataDir := t.TempDir()
	conflist := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "duet-test",
  "plugins": [{
    "type": "bridge", "bridge": "duetbr0", "isGateway": true, "ipMasq": false,
    "ipam": {
      "type": "duet-ipam",
      "dataDir": %q,
      "ranges": [[{"subnet": "10.244.7.0/24"}], [{"subnet": "fd00:10:244:7::/64"}]],
      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    }
  }]
}`, dataDir)
	list, err := libcni.ConfListFromBytes([]byte(conflist))
	if err != nil {
		t.Fatal(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(pluginBin), referencePlugins}, t.TempDir(), nil)
	rt := &libcni.RuntimeConf{ContainerID: "pod-a", NetNS: podPath, IfName: "eth0"}
	ctx := context.Background()

	var res *current.Result
	err = inNetns(nodePath, func() error {
		r, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() {
		// Only if the test stopped before its own DEL; DEL is idempotent.
		_ = inNetns(nodePath, func() error { return cni.DelNetworkList(ctx, list, rt) })
	})

	var fromResult []string
	for _, ip := range res.IPs {
		ones, _ := ip.Address.Mask.Size()
		fromResult = append(fromResult, fmt.Sprintf("eth0 %s/%d", ip.Address.IP, ones))
	}
	slices.Sort(fromResult)
	want := []string{"eth0 10.244.7.2/24", "eth0 fd00:10:244:7::2/64"}
	if !slices.Equal(fromResult, want) {
		t.Fatalf("result has %v, want %v", fromResult, want)
	}
	if got := globalAddrs(t, pod); !slices.Equal(got, want) {
		t.Fatalf("the pod's namespace has %v, want %v", got, want)
	}
	if gw := defaultGateway(t, pod, "-4"); gw != "10.244.7.1" {
		t.Errorf("IPv4 default route via %q, want the gateway 10.244.7.1", gw)
	}
	if gw := defaultGateway(t, pod, "-6"); gw != "fd00:10:244:7::1" {
		t.Errorf("IPv6 default route via %q, want the gateway fd00:10:244:7::1", gw)
	}
	if got := globalAddrs(t, node); !slices.Equal(got, []string{"duetbr0 10.244.7.1/24", "duetbr0 fd00:10:244:7::1/64"}) {
		t.Errorf("the node's bridge has %v, want both gateways", got)
	}

	if err := inNetns(nodePath, func() error { return cni.CheckNetworkList(ctx, list, rt) }); err != nil {
		t.Fatalf("CHECK: %v", err)
	}

	// A second pod gets the next pair.
	rt2 := &libcni.RuntimeConf{ContainerID: "pod-b", NetNS: podPath, IfName: "eth1"}
	if err := inNetns(nodePath, func() error { _, err := cni.AddNetworkList(ctx, list, rt2); return err }); err != nil {
		t.Fatalf("ADD of a second attachment: %v", err)
	}
	got := globalAddrs(t, pod)
	if !slices.Contains(got, "eth1 10.244.7.3/24") || !slices.Contains(got, "eth1 fd00:10:244:7::3/64") {
		t.Fatalf("second attachment: the pod's namespace has %v", got)
	}

	for _, r := range []*libcni.RuntimeConf{rt, rt2} {
		if err := inNetns(nodePath, func() error { return cni.DelNetworkList(ctx, list, r) }); err != nil {
			t.Fatalf("DEL %s: %v", r.ContainerID, err)
		}
	}
	if got := globalAddrs(t, pod); len(got) != 0 {
		t.Fatalf("after DEL the pod's namespace still has %v", got)
	}
	// The addresses are free in the store too: CHECK finds no reservation.
	stdin := ipamConf("1.1.0", dataDir, `[[{"subnet":"10.244.7.0/24"}],[{"subnet":"fd00:10:244:7::/64"}]]`)
	stdin = []byte(strings.Replace(string(stdin), `"name":"bench"`, `"name":"duet-test"`, 1))
	if out, err := (invocation{pluginBin, "CHECK", "pod-a", podPath, stdin}).run(); err == nil || !strings.Contains(string(out), "no addresses are reserved for container pod-a") {
		t.Fatalf("CHECK after DEL: %s, %v", out, err)
	}
	// DEL again, as a runtime retrying would: still success.
	if err := inNetns(nodePath, func() error { return cni.DelNetworkList(ctx, list, rt) }); err != nil {
		t.Fatalf("repeated DEL: %v", err)
	}
}
