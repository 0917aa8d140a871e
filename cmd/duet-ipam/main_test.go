package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/duet-net/duet/internal/testutil/roottest"
)

// pluginBin is duet-ipam built by TestMain, as a runtime would find it.
var pluginBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "duet-ipam-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pluginBin = filepath.Join(dir, "duet-ipam")
	build := exec.Command("go", "build", "-trimpath", "-o", pluginBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building duet-ipam:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var netnsSeq atomic.Int64

// netns creates a network namespace for the test and deletes it after.
func netns(t testing.TB) (name, path string) {
	t.Helper()
	roottest.Require(t, "ip")
	name = fmt.Sprintf("duet-ipam-%d-%d", os.Getpid(), netnsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s (these tests need root and iproute2)", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name, "/run/netns/" + name
}

// invocation is one exec of a CNI plugin, as a runtime makes it.
type invocation struct {
	bin, command, containerID, netns string
	stdin                            []byte
}

func (iv invocation) run() ([]byte, error) { return iv.runWith() }

// runWith runs iv.bin with args, as a runtime runs a plugin.
func (iv invocation) runWith(args ...string) ([]byte, error) {
	cmd := exec.Command(iv.bin, args...)
	cmd.Env = []string{
		"CNI_COMMAND=" + iv.command,
		"CNI_CONTAINERID=" + iv.containerID,
		"CNI_NETNS=" + iv.netns,
		"CNI_IFNAME=eth0",
		"CNI_PATH=" + filepath.Dir(iv.bin),
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
	}
	cmd.Stdin = bytes.NewReader(iv.stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s %s: %v: %s%s", filepath.Base(iv.bin), iv.command, iv.containerID, err, stdout.String(), stderr.String())
	}
	return stdout.Bytes(), nil
}

func ipamConf(version, dataDir, ranges string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":%q,"name":"bench","type":"bridge","ipam":{"type":"duet-ipam","dataDir":%q,"ranges":%s}}`, version, dataDir, ranges))
}

func resultIPs(t testing.TB, out []byte) []string {
	t.Helper()
	res, err := current.NewResult(out)
	if err != nil {
		t.Fatalf("decoding %s: %v", out, err)
	}
	var ips []string
	for _, ip := range res.(*current.Result).IPs {
		ips = append(ips, ip.Address.IP.String())
	}
	return ips
}

func TestConcurrentProcessesNeverShareAnAddress(t *testing.T) {
	_, ns := netns(t)
	stdin := ipamConf("1.1.0", t.TempDir(), `[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]]`)
	const n = 30
	outs := make([][]byte, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = invocation{pluginBin, "ADD", fmt.Sprintf("ctr%d", i), ns, stdin}.run()
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		ips := resultIPs(t, outs[i])
		if len(ips) != 2 || !strings.Contains(ips[1], ":") {
			t.Fatalf("ctr%d got %v, want one IPv4 and one IPv6 address", i, ips)
		}
		for _, ip := range ips {
			if j, dup := seen[ip]; dup {
				t.Fatalf("%s handed to ctr%d and ctr%d", ip, j, i)
			}
			seen[ip] = i
		}
	}
	// Every one of them is recorded: a repeated ADD returns the same pair.
	for i := 0; i < n; i += 7 {
		out, err := invocation{pluginBin, "ADD", fmt.Sprintf("ctr%d", i), ns, stdin}.run()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := resultIPs(t, out), resultIPs(t, outs[i]); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("repeated ADD of ctr%d got %v, first got %v", i, got, want)
		}
	}
}

func TestGCAndStatusThroughTheBinary(t *testing.T) {
	_, ns := netns(t)
	dataDir := t.TempDir()
	// Room for exactly one pod in IPv4.
	stdin := ipamConf("1.1.0", dataDir, `[[{"subnet":"10.0.0.0/30"}],[{"subnet":"fd00::/64"}]]`)
	if _, err := (invocation{pluginBin, "STATUS", "", "", stdin}).run(); err != nil {
		t.Fatalf("STATUS of an empty network: %v", err)
	}
	if _, err := (invocation{pluginBin, "ADD", "leaked", ns, stdin}).run(); err != nil {
		t.Fatal(err)
	}
	out, err := invocation{pluginBin, "STATUS", "", "", stdin}.run()
	var cniErr struct {
		Code uint   `json:"code"`
		Msg  string `json:"msg"`
	}
	if err == nil || json.Unmarshal(out, &cniErr) != nil || cniErr.Code != 50 {
		t.Fatalf("STATUS of a full network: %s, %v; want error code 50", out, err)
	}
	// A GC without cni.dev/valid-attachments is refused and frees nothing.
	out, err = invocation{pluginBin, "GC", "", "", stdin}.run()
	if err == nil || json.Unmarshal(out, &cniErr) != nil || cniErr.Code != 7 || !strings.Contains(cniErr.Msg, "cni.dev/valid-attachments") {
		t.Fatalf("GC without cni.dev/valid-attachments: %s, %v; want error code 7 naming the key", out, err)
	}
	if _, err := (invocation{pluginBin, "CHECK", "leaked", ns, stdin}).run(); err != nil {
		t.Fatalf("a refused GC released the attachment: %v", err)
	}
	// The runtime knows of no attachment: GC frees the leaked one.
	gc := bytes.Replace(stdin, []byte(`"type":"bridge"`), []byte(`"type":"bridge","cni.dev/valid-attachments":[]`), 1)
	if _, err := (invocation{pluginBin, "GC", "", "", gc}).run(); err != nil {
		t.Fatal(err)
	}
	if _, err := (invocation{pluginBin, "STATUS", "", "", stdin}).run(); err != nil {
		t.Fatalf("STATUS after GC: %v", err)
	}
	if out, err := (invocation{pluginBin, "CHECK", "leaked", ns, stdin}).run(); err == nil {
		t.Fatalf("CHECK after GC succeeded: %s", out)
	}
	// The freed address is cooling, but it is all there is: a new pod gets it.
	out, err = invocation{pluginBin, "ADD", "next", ns, stdin}.run()
	if err != nil {
		t.Fatal(err)
	}
	if ips := resultIPs(t, out); ips[0] != "10.0.0.2" {
		t.Fatalf("got %v", ips)
	}
}

func TestVersionAdvertisesCNI11(t *testing.T) {
	out, err := invocation{pluginBin, "VERSION", "", "", nil}.run()
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Supported []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &v); err != nil || !strings.Contains(strings.Join(v.Supported, ","), "1.1.0") {
		t.Fatalf("VERSION said %s", out)
	}
}

// duet-ipam is exec'd once per CNI call: it must stay small and start
// fast, so nothing of Kubernetes may enter its import graph, whatever the
// packages it shares with the agent import.
func TestNoKubernetesInTheImportGraph(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	var k8s []string
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/") || strings.HasPrefix(pkg, "sigs.k8s.io/") {
			k8s = append(k8s, pkg)
		}
	}
	if len(k8s) > 0 {
		t.Fatalf("duet-ipam imports %v", k8s)
	}
}

// mountNS runs a process that holds a private mount namespace with a small
// tmpfs on dir, and returns its PID: the tmpfs is seen only by processes
// that enter that namespace, and goes away with it, so the host's mounts
// never change.
func mountNS(t *testing.T, dir string, size string) int {
	t.Helper()
	roottest.Require(t, "unshare")
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs -o size="$2" duet-ipam-test "$1" && echo ready && exec sleep 600`, "sh", dir, size)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("unshare: %v (this test needs root and util-linux)", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line := make([]byte, 6)
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "ready\n" {
		t.Fatalf("the mount namespace did not come up: %q, %v", line, err)
	}
	return cmd.Process.Pid
}

// inMountNS is an invocation run inside the mount namespace of pid.
func inMountNS(pid int, iv invocation) ([]byte, error) {
	return invocation{"nsenter", iv.command, iv.containerID, iv.netns, iv.stdin}.runWith(
		"--mount=/proc/"+strconv.Itoa(pid)+"/ns/mnt", "--", iv.bin)
}

// A full disk while writing is CNI's I/O failure, code 5 (it used to be
// 999), and the failed ADD leaves nothing behind.
func TestFullDiskIsAnIOFailure(t *testing.T) {
	_, ns := netns(t)
	dataDir := t.TempDir()
	pid := mountNS(t, dataDir, "512k")
	stdin := ipamConf("1.1.0", dataDir, `[[{"subnet":"10.128.0.0/16"}],[{"subnet":"fd00:10:128::/64"}]]`)
	if out, err := inMountNS(pid, invocation{pluginBin, "ADD", "first", ns, stdin}); err != nil {
		t.Fatalf("ADD on an empty disk: %v: %s", err, out)
	}
	// Fill the tmpfs; dd stops at ENOSPC.
	filler := filepath.Join(dataDir, "filler")
	fill := exec.Command("nsenter", "--mount=/proc/"+strconv.Itoa(pid)+"/ns/mnt", "--", "dd", "if=/dev/zero", "of="+filler, "bs=4k")
	if out, err := fill.CombinedOutput(); err == nil || !strings.Contains(string(out), "No space left on device") {
		t.Fatalf("filling the disk: %v: %s", err, out)
	}
	// Reservations grow the file until bbolt needs a page the disk no
	// longer has.
	var failedID string
	var out []byte
	for i := 0; i < 2000 && failedID == ""; i++ {
		id := fmt.Sprintf("ctr%d", i)
		var err error
		if out, err = inMountNS(pid, invocation{pluginBin, "ADD", id, ns, stdin}); err != nil {
			failedID = id
		}
	}
	if failedID == "" {
		t.Fatal("2,000 reservations fitted on a full disk")
	}
	var cniErr struct {
		Code uint   `json:"code"`
		Msg  string `json:"msg"`
	}
	if json.Unmarshal(out, &cniErr) != nil || cniErr.Code != 5 || !strings.Contains(cniErr.Msg, "no space left on device") {
		t.Fatalf("ADD on a full disk printed %s; want error code 5 saying no space is left", out)
	}
	// Nothing of the failed ADD was kept; with room again it goes through.
	rm := exec.Command("nsenter", "--mount=/proc/"+strconv.Itoa(pid)+"/ns/mnt", "--", "rm", filler)
	if out, err := rm.CombinedOutput(); err != nil {
		t.Fatalf("removing the filler: %v: %s", err, out)
	}
	out, err := inMountNS(pid, invocation{pluginBin, "CHECK", failedID, ns, stdin})
	if err == nil || json.Unmarshal(out, &cniErr) != nil || cniErr.Code != 3 {
		t.Fatalf("CHECK of the failed ADD: %s, %v; want code 3, no reservation", out, err)
	}
	if out, err := inMountNS(pid, invocation{pluginBin, "ADD", failedID, ns, stdin}); err != nil {
		t.Fatalf("ADD with room again: %v: %s", err, out)
	}
	if out, err := inMountNS(pid, invocation{pluginBin, "CHECK", "first", ns, stdin}); err != nil {
		t.Fatalf("the first reservation did not survive the full disk: %v: %s", err, out)
	}
}
