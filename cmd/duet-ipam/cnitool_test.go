package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// TestCnitool drives duet-ipam under the reference bridge plugin with the
// CNI project's own cnitool, as a user trying it by hand would: ADD gives
// the pod one address per family, CHECK passes, DEL gives them back and a
// second DEL still succeeds.
func TestCnitool(t *testing.T) {
	cnitool := filepath.Join(t.TempDir(), "cnitool")
	if out, err := exec.Command("go", "build", "-o", cnitool, "github.com/containernetworking/cni/cnitool").CombinedOutput(); err != nil {
		t.Fatalf("building cnitool: %v\n%s", err, out)
	}
	node, _ := netns(t)
	pod, podPath := netns(t)
	for _, ns := range []string{node, pod} {
		if out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
			"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0").CombinedOutput(); err != nil {
			t.Fatalf("sysctl in %s: %v: %s", ns, err, out)
		}
	}
	confDir := t.TempDir()
	conflist := `{
  "cniVersion": "1.0.0", "name": "dualnet",
  "plugins": [{
    "type": "bridge", "bridge": "duetbr1", "isGateway": true,
    "ipam": {"type": "duet-ipam", "dataDir": "` + t.TempDir() + `",
             "ranges": [[{"subnet": "10.244.9.0/24"}], [{"subnet": "fd00:10:244:9::/64"}]]}
  }]
}`
	if err := os.WriteFile(filepath.Join(confDir, "10-dualnet.conflist"), []byte(conflist), 0o600); err != nil {
		t.Fatal(err)
	}
	// cnitool runs in the test's "node" namespace, so the bridge lands there.
	run := func(verb string) ([]byte, error) {
		cmd := exec.Command("ip", "netns", "exec", node, cnitool, verb, "dualnet", podPath)
		cmd.Env = append(os.Environ(), "NETCONFPATH="+confDir,
			"CNI_PATH="+filepath.Dir(pluginBin)+":"+referencePlugins, "CNI_IFNAME=eth0")
		return cmd.CombinedOutput()
	}
	out, err := run("add")
	if err != nil {
		t.Fatalf("cnitool add: %v\n%s", err, out)
	}
	var res current.Result
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("cnitool add printed %s: %v", out, err)
	}
	var got []string
	for _, ip := range res.IPs {
		got = append(got, ip.Address.String())
	}
	if len(got) != 2 || !strings.HasPrefix(got[0], "10.244.9.") || !strings.HasPrefix(got[1], "fd00:10:244:9::") {
		t.Fatalf("cnitool add: IPs %v, want one from each range", got)
	}
	addrs, err := exec.Command("ip", "-n", pod, "-br", "addr", "show", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(addrs), got[0]) || !strings.Contains(string(addrs), got[1]) {
		t.Fatalf("pod eth0 lacks %v: %s %v", got, addrs, err)
	}
	if out, err := run("check"); err != nil {
		t.Fatalf("cnitool check: %v\n%s", err, out)
	}
	for range 2 {
		if out, err := run("del"); err != nil {
			t.Fatalf("cnitool del: %v\n%s", err, out)
		}
	}
	// After DEL the attachment is gone, so the same container (cnitool
	// derives its ID from the namespace path) can be added afresh.
	if out, err := run("add"); err != nil {
		t.Fatalf("cnitool add after del: %v\n%s", err, out)
	}
}
