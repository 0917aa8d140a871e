package podroot

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/testutil/roottest"
)

// mountCount is the number of mounts in the test's own mount table.
func enter(t *testing.T, r *Root, container, script string) string {
	t.Helper()
	args := append(r.EnterArgs(container), "--", "sh", "-c", script)
	out, err := exec.Command("nsenter", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// A pod's world has its hostname, its own /etc/hosts, an image file and
// volumes at paths the host does not have, shared by its containers; the
// host's tree and mount table are as they were once it is removed.
func TestWorldIsThePodsAndLeavesNothing(t *testing.T) {
	roottest.Require(t, "nsenter", "sh")
	state := t.TempDir()
	before := mountTable(t)
	hostHosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatal(err)
	}
	imageFile := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(imageFile, []byte("#!/bin/sh\necho image-tool\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec := &Spec{
		UID: "uid-1", Namespace: "ns1", Name: "web-0",
		Addrs: []netip.Addr{netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("fd00:10:244::5")},
		Volumes: []Volume{
			{Name: "cfg", Files: map[string]File{"greeting": {Data: []byte("hello")}}},
			{Name: "scratch", EmptyDir: &EmptyDir{}},
		},
		Containers: []Container{
			{Name: "a", ImageFiles: []ImageFile{{Path: "/duet-image-tool", Source: imageFile}},
				Mounts: []corev1.VolumeMount{{Name: "cfg", MountPath: "/duet-test-volume/cfg"}, {Name: "scratch", MountPath: "/scratch"}}},
			{Name: "b", Mounts: []corev1.VolumeMount{{Name: "scratch", MountPath: "/data"}}},
		},
	}
	r, err := Create(context.Background(), state, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Remove() }()

	if got := strings.TrimSpace(enter(t, r, "a", "hostname")); got != "web-0" {
		t.Errorf("hostname = %q, want web-0", got)
	}
	hosts := enter(t, r, "a", "cat /etc/hosts")
	for _, want := range []string{"10.244.0.5", "fd00:10:244::5", "web-0"} {
		if !strings.Contains(hosts, want) {
			t.Errorf("/etc/hosts lacks %s:\n%s", want, hosts)
		}
	}
	if got := strings.TrimSpace(enter(t, r, "a", "/duet-image-tool")); got != "image-tool" {
		t.Errorf("the image's file ran as %q", got)
	}
	if got := enter(t, r, "a", "cat /duet-test-volume/cfg/greeting"); got != "hello" {
		t.Errorf("configMap-like volume reads %q", got)
	}
	// One emptyDir, two containers, two mount paths.
	enter(t, r, "a", "echo shared > /scratch/f")
	if got := strings.TrimSpace(enter(t, r, "b", "cat /data/f")); got != "shared" {
		t.Errorf("emptyDir not shared: %q", got)
	}
	// Writes anywhere in the pod stay in the pod.
	enter(t, r, "a", "echo x > /duet-written-by-pod")

	for _, p := range []string{"/duet-test-volume", "/duet-image-tool", "/scratch", "/data", "/duet-written-by-pod"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s appeared on the host", p)
		}
	}
	if got, _ := os.ReadFile("/etc/hosts"); string(got) != string(hostHosts) {
		t.Errorf("the host's /etc/hosts changed")
	}
	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
	if left, err := List(state); err != nil || len(left) != 0 {
		t.Errorf("List after Remove = %v, %v", left, err)
	}
	// The pin directory's own mount stays for the next pod, until the
	// agent's state goes (duet down).
	if err := RemoveAll(state); err != nil {
		t.Fatal(err)
	}
	if after := mountTable(t); !slices.Equal(after, before) {
		t.Errorf("the mount table changed:\nbefore:\n%s\nafter RemoveAll:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
}
