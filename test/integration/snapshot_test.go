package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/duet-net/duet/test/harness"
)

// TestSnapshotSaveRestore: a snapshot of a running server, restored into
// a fresh data directory, starts a server holding exactly the Services
// and cluster IP allocations of the moment of the snapshot: not those
// created after it; and the allocations of its Services stay theirs (a
// new Service gets none of them). A damaged snapshot is refused.
func TestSnapshotSaveRestore(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	a := StartServer(t, haOpts)
	want := map[string][]string{}
	for i := range 20 {
		svc, err := a.Client.CoreV1().Services("default").Create(ctx, haService(fmt.Sprintf("before-%d", i)), metav1.CreateOptions{})
		fatalIf(t, err)
		want[svc.Name] = svc.Spec.ClusterIPs
	}
	file := filepath.Join(t.TempDir(), "snap.db")
	out, err := exec.Command(harness.Bin, "snapshot", "save", file, "--data-dir", a.DataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("duet snapshot save: %v\n%s", err, out)
	}
	_, err = a.Client.CoreV1().Services("default").Create(ctx, haService("after"), metav1.CreateOptions{})
	fatalIf(t, err)
	fatalIf(t, a.Stop())

	// A damaged copy fails the checksum.
	data, err := os.ReadFile(file)
	fatalIf(t, err)
	data[len(data)/2] ^= 0xff
	bad := filepath.Join(t.TempDir(), "bad.db")
	fatalIf(t, os.WriteFile(bad, data, 0o600))
	out, err = exec.Command(harness.Bin, "snapshot", "restore", bad, "--data-dir", t.TempDir()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "checksum does not match") {
		t.Errorf("restoring a damaged snapshot: %v\n%s\nwant an error about its checksum", err, out)
	}

	b := NewServer(t, haOpts)
	out, err = exec.Command(harness.Bin, "snapshot", "restore", file, "--data-dir", b.DataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("duet snapshot restore: %v\n%s", err, out)
	}
	b.Start(t)
	list, err := b.Client.CoreV1().Services("default").List(ctx, metav1.ListOptions{})
	fatalIf(t, err)
	got := map[string][]string{}
	for _, s := range list.Items {
		if s.Name != "kubernetes" {
			got[s.Name] = s.Spec.ClusterIPs
		}
	}
	if len(got) != len(want) {
		t.Errorf("restored Services %d, want the snapshot's %d", len(got), len(want))
	}
	for name, ips := range want {
		if !slices.Equal(got[name], ips) {
			t.Errorf("restored %s has cluster IPs %v, want %v", name, got[name], ips)
		}
	}
	if _, err := b.Client.CoreV1().Services("default").Get(ctx, "after", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a Service created after the snapshot exists after the restore: %v", err)
	}
	// The restored allocations are held: new Services get other IPs.
	held := map[string]bool{}
	for _, ips := range want {
		for _, ip := range ips {
			held[ip] = true
		}
	}
	for i := range 20 {
		svc, err := b.Client.CoreV1().Services("default").Create(ctx, haService(fmt.Sprintf("new-%d", i)), metav1.CreateOptions{})
		fatalIf(t, err)
		for _, ip := range svc.Spec.ClusterIPs {
			if held[ip] {
				t.Errorf("new Service %s got %s, which a restored Service holds", svc.Name, ip)
			}
		}
	}
	ipa, err := b.Client.NetworkingV1().IPAddresses().List(ctx, metav1.ListOptions{})
	fatalIf(t, err)
	for _, ip := range ipa.Items {
		delete(held, ip.Name)
	}
	if len(held) > 0 {
		t.Errorf("restored cluster IPs without an IPAddress: %v", held)
	}
}
