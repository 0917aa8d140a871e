package podroot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/testutil/roottest"
)

// testSpec is a pod with two containers sharing an emptyDir, a
// configMap-like volume at a path the host has (/etc/config, read-only), at
// one it lacks (/duet-test-volume/x) and by subPath, a Memory emptyDir and
// an image file.
func testSpec(uid, imageFile string) *Spec {
	return &Spec{
		UID: uid, Namespace: "ns1", Name: "web-0", Hostname: "web", Subdomain: "sub",
		Addrs:       []netip.Addr{netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00:10:244:1::5")},
		HostAliases: []corev1.HostAlias{{IP: "198.51.100.7", Hostnames: []string{"outside.example", "out"}}},
		ClusterDNS:  []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:10:96::a")},
		Volumes: []Volume{
			{Name: "config", Files: map[string]File{"key": {Data: []byte("v1")}, "dir/nested": {Data: []byte("n1"), Mode: 0o600}}},
			{Name: "shared", EmptyDir: &EmptyDir{}},
			{Name: "mem", EmptyDir: &EmptyDir{Medium: corev1.StorageMediumMemory, SizeLimit: 8 << 20}},
		},
		Containers: []Container{
			{Name: "a", Mounts: []corev1.VolumeMount{
				{Name: "config", MountPath: "/etc/config", ReadOnly: true},
				{Name: "config", MountPath: "/duet-test-volume/x"},
				{Name: "config", MountPath: "/duet-sub/key.txt", SubPath: "key"},
				{Name: "shared", MountPath: "/shared"},
				{Name: "shared", MountPath: "/duet-sub/made", SubPath: "made/here"},
			}, ImageFiles: []ImageFile{{Path: "/duet-image/bin/tool", Source: imageFile}}},
			{Name: "b", Mounts: []corev1.VolumeMount{
				{Name: "shared", MountPath: "/data"},
				{Name: "mem", MountPath: "/mem"},
			}},
		},
	}
}

// hostPaths are paths the worlds create or change; the host must not see it.
var hostPaths = []string{"/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/etc/config", "/duet-test-volume",
	"/duet-sub", "/shared", "/data", "/mem", "/duet-image", "/duet-written"}

// hostSnapshot is what the tests compare before and after: the host's
// hostname, the paths above (content, or absence), the names in / and /etc
// that start with "duet" (others may come and go with the machine's other
// users), and the mount table.
func hostSnapshot(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	h, _ := os.Hostname()
	fmt.Fprintf(&b, "hostname %s\n", h)
	for _, p := range hostPaths {
		fi, err := os.Lstat(p)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", p, errors.Is(err, os.ErrNotExist))
			continue
		}
		data, _ := os.ReadFile(p)
		fmt.Fprintf(&b, "%s: %v %v %q\n", p, fi.Mode(), fi.ModTime(), data)
	}
	for _, dir := range []string{"/", "/etc"} {
		des, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range des {
			if strings.HasPrefix(de.Name(), "duet") {
				fmt.Fprintf(&b, "%s/%s ", dir, de.Name())
			}
		}
		b.WriteString("\n")
	}
	b.WriteString(strings.Join(mountTable(t), "\n"))
	return b.String()
}

// mountTable is the test process's mount table, without mount IDs, and
// without what the machine's other users mount meanwhile (they propagate
// into the test's mount namespace through shared mounts): network
// namespaces under /run/netns, and anything under the temporary directory
// but this test's own.
func mountTable(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Clean(os.TempDir()) + "/"
	own := filepath.Dir(t.TempDir()) + "/"
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) <= 4 {
			continue
		}
		mp := f[4] + "/"
		if strings.HasPrefix(mp, "/run/netns/") || strings.HasPrefix(mp, tmp) && !strings.HasPrefix(mp, own) {
			continue
		}
		out = append(out, strings.Join(f[3:], " "))
	}
	sort.Strings(out)
	return out
}

// in runs a shell script in a container's world and returns its output.
func in(t *testing.T, r *Root, container, script string) string {
	t.Helper()
	args := append(r.EnterArgs(container), "--", "sh", "-c", script)
	out, err := exec.Command("nsenter", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", container, script, err, out)
	}
	return string(out)
}

// inFails runs a script that must fail in a container's world.
func inFails(t *testing.T, r *Root, container, script string) {
	t.Helper()
	args := append(r.EnterArgs(container), "--", "sh", "-c", script)
	if out, err := exec.Command("nsenter", args...).CombinedOutput(); err == nil {
		t.Fatalf("in %s: %s succeeded, want a failure:\n%s", container, script, out)
	}
}

func imageFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho image tool\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWorld(t *testing.T) {
	roottest.Require(t, "nsenter")
	before := hostSnapshot(t)
	state := t.TempDir()
	r, err := Create(context.Background(), state, testSpec("uid-world", imageFile(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = RemoveAll(state) })

	if got := in(t, r, "a", "hostname; cat /etc/hostname"); got != "web\nweb\n" {
		t.Errorf("hostname = %q, want web twice", got)
	}
	hosts := in(t, r, "b", "cat /etc/hosts")
	for _, want := range []string{"127.0.0.1\tlocalhost\n", "::1\tlocalhost ip6-localhost ip6-loopback\n",
		"10.244.1.5\tweb.sub.ns1.svc.cluster.local\tweb\n", "fd00:10:244:1::5\tweb.sub.ns1.svc.cluster.local\tweb\n",
		"198.51.100.7\toutside.example\tout\n"} {
		if !strings.Contains(hosts, want) {
			t.Errorf("/etc/hosts lacks %q:\n%s", want, hosts)
		}
	}
	resolv := in(t, r, "a", "cat /etc/resolv.conf")
	if !strings.HasPrefix(resolv, "search ns1.svc.cluster.local svc.cluster.local cluster.local") ||
		!strings.Contains(resolv, "nameserver 10.96.0.10\nnameserver fd00:10:96::a\noptions ndots:5\n") {
		t.Errorf("/etc/resolv.conf:\n%s", resolv)
	}
	if got := in(t, r, "a", "cat /etc/config/key /duet-test-volume/x/key /duet-test-volume/x/dir/nested /duet-sub/key.txt"); got != "v1v1n1v1" {
		t.Errorf("configMap files read %q, want v1v1n1v1", got)
	}
	if got := in(t, r, "a", "stat -L -c %a /etc/config/dir/nested /etc/config/key"); got != "600\n644\n" {
		t.Errorf("modes %q, want 600 and 644", got)
	}
	inFails(t, r, "a", "echo x > /etc/config/new")
	in(t, r, "a", "echo x > /duet-test-volume/x/new") // the same volume, mounted read-write
	if got := in(t, r, "a", "/duet-image/bin/tool"); got != "image tool\n" {
		t.Errorf("image file ran as %q", got)
	}
	inFails(t, r, "a", "echo x >> /duet-image/bin/tool")

	// An emptyDir is one directory for both containers; the Memory one is a
	// tmpfs; the subPath was made in it.
	in(t, r, "a", "echo from-a > /shared/f")
	if got := in(t, r, "b", "cat /data/f; test -d /data/made/here && echo made"); got != "from-a\nmade\n" {
		t.Errorf("b read %q from the shared emptyDir", got)
	}
	if got := in(t, r, "b", "stat -f -c %T /mem"); got != "tmpfs\n" {
		t.Errorf("/mem is %q, want tmpfs", got)
	}
	// Writes anywhere stay in the container, as in its own root file
	// system; the pod's files are the pod's; a's mounts (and their mount
	// points) are a's.
	in(t, r, "b", "echo w > /duet-written; echo 127.0.0.9 extra >> /etc/hosts; mkdir -p /usr/duet-new; cat /duet-written")
	if got := in(t, r, "a", "test -e /duet-written || echo own-root; tail -n 1 /etc/hosts; test -e /usr/duet-new || echo own-usr"); got != "own-root\n127.0.0.9 extra\nown-usr\n" {
		t.Errorf("a saw %q", got)
	}
	if got := in(t, r, "b", "test -e /etc/config || test -e /duet-test-volume || echo no-config"); got != "no-config\n" {
		t.Errorf("b sees a's volume or its mount point: %q", got)
	}

	// Update swaps the content in; the subPath mount keeps the old file.
	if err := r.Update([]Volume{{Name: "config", Files: map[string]File{"key": {Data: []byte("v2")}, "added": {Data: []byte("a")}}}}); err != nil {
		t.Fatal(err)
	}
	if got := in(t, r, "a", "cat /etc/config/key /etc/config/added /duet-sub/key.txt; test -e /etc/config/dir || echo gone"); got != "v2av1gone\n" {
		t.Errorf("after Update read %q, want v2 a v1 gone", got)
	}

	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(podState(state, "uid-world")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state left after Remove: %v", err)
	}
	for _, m := range mountTable(t) {
		if strings.Contains(m, "uid-world") {
			t.Errorf("mount left after Remove: %s", m)
		}
	}
	if err := RemoveAll(state); err != nil {
		t.Fatal(err)
	}
	if after := hostSnapshot(t); after != before {
		t.Errorf("the host changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestHostNetworkWorld(t *testing.T) {
	roottest.Require(t, "nsenter")
	before := hostSnapshot(t)
	state := t.TempDir()
	s := &Spec{UID: "uid-hostnet", Namespace: "kube-system", Name: "agent-x", HostNetwork: true, NodeName: "node7",
		DNSPolicy: corev1.DNSClusterFirst, ClusterDNS: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		HostAliases: []corev1.HostAlias{{IP: "2001:db8::7", Hostnames: []string{"v6.example"}}},
		Containers:  []Container{{Name: "c"}}}
	r, err := Create(context.Background(), state, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = RemoveAll(state) })
	host, _ := os.ReadFile("/etc/hosts")
	hostResolv, _ := os.ReadFile("/etc/resolv.conf")
	out := in(t, r, "c", "hostname; cat /etc/hosts; echo ---; cat /etc/resolv.conf")
	want := "node7\n" + hostsHeaderHostNetwork + string(host) + "\n# Entries added by HostAliases.\n2001:db8::7\tv6.example\n---\n"
	if !strings.HasPrefix(out, want) {
		t.Errorf("hostNetwork world:\n%s\nwant prefix:\n%s", out, want)
	}
	hc, err := ParseResolvConf(hostResolv)
	if err != nil {
		t.Fatal(err)
	}
	// ClusterFirst on the host network is Default: the host's resolvers.
	if got := out[len(want):]; got != string(hc.Render()) {
		t.Errorf("resolv.conf %q, want the host's %q", got, hc.Render())
	}
	if err := RemoveAll(state); err != nil {
		t.Fatal(err)
	}
	if after := hostSnapshot(t); after != before {
		t.Errorf("the host changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestCreatorKilled kills processes that make and remove worlds at any
// moment, then a restarted creator reuses a whole world (its files as the
// pod left them) and RemoveAll leaves nothing.
func TestCreatorKilled(t *testing.T) {
	roottest.Require(t, "nsenter")
	before := hostSnapshot(t)
	state := t.TempDir()
	t.Cleanup(func() { _ = RemoveAll(state) })
	img := imageFile(t)
	for i := range 6 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), creatorEnv+"="+state, "DUET_PODROOT_TEST_IMAGE="+img)
		if i == 0 {
			cmd.Env = append(cmd.Env, "DUET_PODROOT_TEST_HOLD=1")
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := bufio.NewScanner(out)
		if !lines.Scan() || lines.Text() != "created" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("creator %d did not create a world (%q)", i, lines.Text())
		}
		if i > 0 {
			// Let it go on creating and removing for a varying while, so the
			// kill lands at different steps.
			time.Sleep(time.Duration(i) * 7 * time.Millisecond) // not synchronisation: picks a random moment
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if i == 0 {
			// The held world survived its creator: a restarted one reuses it.
			r, err := Create(context.Background(), state, testSpec("uid-held", img))
			if err != nil {
				t.Fatal(err)
			}
			if got := in(t, r, "b", "cat /data/left; hostname"); got != "by-creator\nweb\n" {
				t.Errorf("reused world shows %q", got)
			}
		}
	}
	uids, err := List(state)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(uids, "uid-held") {
		t.Errorf("List = %v, want uid-held among them", uids)
	}
	// Whatever half-made world a kill left, Create makes it whole.
	for _, uid := range uids {
		r, err := Create(context.Background(), state, testSpec(uid, img))
		if err != nil {
			t.Fatalf("Create after a kill: %v", err)
		}
		if got := in(t, r, "a", "cat /etc/config/key"); got != "v1" {
			t.Errorf("world %s after a kill reads %q", uid, got)
		}
	}
	if err := RemoveAll(state); err != nil {
		t.Fatal(err)
	}
	if after := hostSnapshot(t); after != before {
		t.Errorf("the host changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// runCreator is the killed creator of TestCreatorKilled.
func runCreator(state string) int {
	img := os.Getenv("DUET_PODROOT_TEST_IMAGE")
	if os.Getenv("DUET_PODROOT_TEST_HOLD") != "" {
		r, err := Create(context.Background(), state, testSpec("uid-held", img))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		args := append(r.EnterArgs("a"), "--", "sh", "-c", "echo by-creator > /shared/left")
		if out, err := exec.Command("nsenter", args...).CombinedOutput(); err != nil {
			fmt.Fprintln(os.Stderr, err, string(out))
			return 1
		}
		fmt.Println("created")
		select {}
	}
	for i := 0; ; i++ {
		uid := fmt.Sprintf("uid-loop-%d", i%3)
		if _, err := Create(context.Background(), state, testSpec(uid, img)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if i == 0 {
			fmt.Println("created")
		}
		if i%2 == 1 {
			if err := Remove(state, uid); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
	}
}

// TestCreateTime measures what a world adds to a pod's start (two
// containers, three volumes) and logs the median.
func TestCreateTime(t *testing.T) {
	roottest.Require(t, "nsenter")
	state := t.TempDir()
	t.Cleanup(func() { _ = RemoveAll(state) })
	img := imageFile(t)
	var create, remove []time.Duration
	for i := range 15 {
		uid := fmt.Sprintf("uid-time-%d", i)
		begin := time.Now()
		if _, err := Create(context.Background(), state, testSpec(uid, img)); err != nil {
			t.Fatal(err)
		}
		create = append(create, time.Since(begin))
		begin = time.Now()
		if err := Remove(state, uid); err != nil {
			t.Fatal(err)
		}
		remove = append(remove, time.Since(begin))
	}
	slices.Sort(create)
	slices.Sort(remove)
	t.Logf("Create p50 %v (min %v, max %v); Remove p50 %v", create[len(create)/2], create[0], create[len(create)-1], remove[len(remove)/2])
}

// TestVolumeOnHostMount mounts a volume where the host has a file system of
// its own, as /run is on systemd machines (the ServiceAccount token goes to
// /var/run/secrets/...): the container gets an overlay of that file system,
// the host's files and the mounts on it included, with the mount point in
// its own layer; the host's file system is unchanged.
func TestVolumeOnHostMount(t *testing.T) {
	roottest.Require(t, "nsenter")
	const hostFS = "/duet-test-hostfs"
	if err := os.Mkdir(hostFS, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = unix.Unmount(hostFS+"/sub", unix.MNT_DETACH)
		_ = unix.Unmount(hostFS, unix.MNT_DETACH)
		_ = os.Remove(hostFS)
	})
	if err := unix.Mount("duet-test", hostFS, "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hostFS+"/host-file", []byte("host"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(hostFS+"/sub", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("duet-test-sub", hostFS+"/sub", "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hostFS+"/sub/f", []byte("sub"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := hostSnapshot(t)
	listing := func() string {
		des, _ := os.ReadDir(hostFS)
		var names []string
		for _, de := range des {
			names = append(names, de.Name())
		}
		return strings.Join(names, " ")
	}
	hostBefore := listing()

	state := t.TempDir()
	spec := &Spec{
		UID: "uid-hostfs", Namespace: "ns1", Name: "p", Hostname: "p",
		Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.6")},
		Volumes: []Volume{
			{Name: "token", Files: map[string]File{"token": {Data: []byte("t1")}}},
			{Name: "shared", EmptyDir: &EmptyDir{}},
		},
		Containers: []Container{
			{Name: "a", Mounts: []corev1.VolumeMount{
				{Name: "shared", MountPath: hostFS + "/first"},
				{Name: "token", MountPath: hostFS + "/secrets/sa", ReadOnly: true},
				{Name: "shared", MountPath: hostFS + "/sub/deeper/vol"},
			}},
			{Name: "b"},
		},
	}
	r, err := Create(context.Background(), state, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = RemoveAll(state) })

	got := in(t, r, "a", "cat "+hostFS+"/secrets/sa/token "+hostFS+"/host-file "+hostFS+"/sub/f; echo; "+
		"echo x > "+hostFS+"/first/f; cat "+hostFS+"/sub/deeper/vol/f; echo mine > "+hostFS+"/written; cat "+hostFS+"/written")
	if got != "t1hostsub\nx\nmine\n" {
		t.Errorf("container a read %q", got)
	}
	inFails(t, r, "a", "echo x > "+hostFS+"/secrets/sa/new")
	if got := in(t, r, "b", "cat "+hostFS+"/host-file; test -e "+hostFS+"/secrets || test -e "+hostFS+"/written || echo clean"); got != "hostclean\n" {
		t.Errorf("container b read %q", got)
	}
	if got := listing(); got != hostBefore {
		t.Errorf("the host's file system has %q, had %q", got, hostBefore)
	}
	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := RemoveAll(state); err != nil {
		t.Fatal(err)
	}
	if after := hostSnapshot(t); after != before {
		t.Errorf("the host changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
