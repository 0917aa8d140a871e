package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/duet-net/duet/test/harness"
)

var haOpts = ServerOptions{ServiceRanges: "10.96.0.0/16,fd00:10:96::/108", ClusterCIDR: "10.244.0.0/16,fd00:10:244::/56"}

// startCluster starts a server and n-1 more that join it one by one.
func startCluster(t *testing.T, n int) []*Server {
	t.Helper()
	servers := []*Server{StartServer(t, haOpts)}
	for len(servers) < n {
		o := haOpts
		o.Extra = harness.JoinFlags(servers...)
		servers = append(servers, StartServer(t, o))
	}
	return servers
}

func haService(name string) *corev1.Service {
	policy := corev1.IPFamilyPolicyPreferDualStack
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{IPFamilyPolicy: &policy,
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
}

// TestJoinLeaveAndQuorum: three servers form one etcd cluster through
// --join; what one writes the others read; the kubernetes Service lists
// all three. A stopped server leaves with --leave. With one of the two
// left killed, the survivor reports not ready and refuses writes at once
// with a 503 naming the lost quorum; once the other is back, writes
// succeed and nothing written before is lost.
func TestJoinLeaveAndQuorum(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	s := startCluster(t, 3)
	a, b, c := s[0], s[1], s[2]

	etcd := a.EtcdClient(t)
	members, err := a.EtcdMembers(ctx, etcd)
	fatalIf(t, err)
	if len(members) != 3 || slices.ContainsFunc(members, func(m string) bool { return strings.Contains(m, "learner") }) {
		t.Fatalf("etcd members after two joins: %v, want three voting members", members)
	}
	for _, x := range s[1:] {
		mine, err := os.ReadFile(filepath.Join(x.DataDir, "join-token"))
		fatalIf(t, err)
		first, err := os.ReadFile(filepath.Join(a.DataDir, "join-token"))
		fatalIf(t, err)
		if string(mine) != string(first) {
			t.Errorf("a joined server's join-token differs from the first server's: every server must let others join")
		}
	}

	created, err := b.Client.CoreV1().Services("default").Create(ctx, haService("from-b"), metav1.CreateOptions{})
	fatalIf(t, err)
	for _, x := range []*Server{a, c} {
		got, err := x.Client.CoreV1().Services("default").Get(ctx, "from-b", metav1.GetOptions{})
		fatalIf(t, err)
		if !slices.Equal(got.Spec.ClusterIPs, created.Spec.ClusterIPs) {
			t.Errorf("another server reads cluster IPs %v, the creating one answered %v", got.Spec.ClusterIPs, created.Spec.ClusterIPs)
		}
	}
	eventually(t, time.Minute, "the kubernetes Service's endpoints list all three servers", func() error {
		eps, err := a.Client.CoreV1().Endpoints("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			return err
		}
		n := 0
		for _, ss := range eps.Subsets {
			n += len(ss.Addresses) * len(ss.Ports)
		}
		if n != 3 {
			return fmt.Errorf("%d endpoints: %+v", n, eps.Subsets)
		}
		return nil
	})

	// c leaves: stopped first, then --leave.
	fatalIf(t, c.Stop())
	out, err := exec.Command(harness.Bin, "server", "--leave", "--data-dir", c.DataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("duet server --leave: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "left the cluster") {
		t.Errorf("duet server --leave printed no confirmation:\n%s", out)
	}
	eventually(t, 30*time.Second, "two etcd members after --leave", func() error {
		m, err := a.EtcdMembers(ctx, etcd)
		if err != nil || len(m) != 2 {
			return fmt.Errorf("members %v, %v", m, err)
		}
		return nil
	})
	out, err = exec.Command(harness.Bin, "server", "--leave", "--data-dir", c.DataDir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "holds no etcd member") {
		t.Errorf("a second --leave: %v\n%s\nwant an error saying the directory holds no member", err, out)
	}

	// Of two members, one is no quorum.
	b.Kill(t)
	eventually(t, 20*time.Second, "the survivor reports not ready", func() error {
		body, err := a.Client.Discovery().RESTClient().Get().AbsPath("/readyz").Param("verbose", "1").DoRaw(ctx)
		if err == nil {
			return errors.New("/readyz ok")
		}
		if !strings.Contains(string(body), "[-]etcd-quorum failed") {
			return fmt.Errorf("/readyz fails, but not the etcd-quorum check: %s", body)
		}
		return nil
	})
	start := time.Now()
	_, err = a.Client.CoreV1().Services("default").Create(ctx, haService("no-quorum"), metav1.CreateOptions{})
	took := time.Since(start)
	if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "quorum") {
		t.Fatalf("a create without quorum: %v; want a 503 naming the lost quorum", err)
	}
	if took > 3*time.Second {
		t.Errorf("a create without quorum took %v to fail; want it refused at once", took)
	}
	t.Logf("without quorum a create failed in %v: %v", took.Round(time.Millisecond), err)

	b.Restart(t)
	eventually(t, 30*time.Second, "writes succeed once the quorum is back", func() error {
		_, err := a.Client.CoreV1().Services("default").Create(ctx, haService("after"), metav1.CreateOptions{})
		return err
	})
	got, err := a.Client.CoreV1().Services("default").Get(ctx, "from-b", metav1.GetOptions{})
	fatalIf(t, err)
	if !slices.Equal(got.Spec.ClusterIPs, created.Spec.ClusterIPs) {
		t.Errorf("after the outage from-b has cluster IPs %v, want %v", got.Spec.ClusterIPs, created.Spec.ClusterIPs)
	}
	if _, err := a.Client.CoreV1().Services("default").Get(ctx, "no-quorum", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the refused create left a Service behind: %v", err)
	}
}

// TestJoinRefusesAWrongToken: a server joining with a token of another
// cluster (another CA) or with a wrong secret exits with an error saying
// so, and the cluster keeps its one member.
func TestJoinRefusesAWrongToken(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	a := StartServer(t, haOpts)
	tok, err := os.ReadFile(filepath.Join(a.DataDir, "join-token"))
	fatalIf(t, err)
	parts := strings.Split(strings.TrimSpace(string(tok)), ":")
	otherCA := parts[0] + ":" + strings.Repeat("0", 64) + ":" + parts[2]
	wrongSecret := parts[0] + ":" + parts[1] + ":" + strings.Repeat("x", 43)
	for _, tc := range []struct{ name, token, want string }{
		{"another cluster's CA", otherCA, "not signed by the cluster CA"},
		{"a wrong secret", wrongSecret, "refused the join token"},
		{"not a token", "hello", "--token: join token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, harness.Bin, "server", "--data-dir", t.TempDir(), "--secure-port", "0",
				"--service-cluster-ip-range", haOpts.ServiceRanges, "--join", a.Config.Host, "--token", tc.token)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("joining with %s: %v\n%s\nwant an error containing %q", tc.name, err, tail(string(out), 15), tc.want)
			}
		})
	}
	members, err := a.EtcdMembers(ctx, a.EtcdClient(t))
	fatalIf(t, err)
	if len(members) != 1 {
		t.Errorf("members after refused joins: %v, want the first server's alone", members)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestMemberRemoveOfADeadServer: a server killed for good is removed with
// duet member remove from a survivor; duet member list shows who is left,
// and a server cannot remove its own member that way.
func TestMemberRemoveOfADeadServer(t *testing.T) {
	t.Parallel()
	s := startCluster(t, 3)
	a, c := s[0], s[2]
	nameData, err := os.ReadFile(filepath.Join(c.DataDir, "etcd", "name"))
	fatalIf(t, err)
	cName := strings.TrimSpace(string(nameData))
	c.Kill(t)
	out, err := exec.Command(harness.Bin, "member", "list", "--data-dir", a.DataDir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), cName) || !strings.Contains(string(out), "(this server)") {
		t.Fatalf("duet member list: %v\n%s\nwant the dead member %s and this server marked", err, out, cName)
	}
	out, err = exec.Command(harness.Bin, "member", "remove", cName, "--data-dir", a.DataDir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "removed member "+cName) {
		t.Fatalf("duet member remove %s: %v\n%s", cName, err, out)
	}
	members, err := a.EtcdMembers(ctxT(t), a.EtcdClient(t))
	fatalIf(t, err)
	if len(members) != 2 || slices.Contains(members, cName) {
		t.Errorf("members after the removal: %v, want two without %s", members, cName)
	}
	aName, err := os.ReadFile(filepath.Join(a.DataDir, "etcd", "name"))
	fatalIf(t, err)
	out, err = exec.Command(harness.Bin, "member", "remove", strings.TrimSpace(string(aName)), "--data-dir", a.DataDir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--leave") {
		t.Errorf("removing a server's own member: %v\n%s\nwant a refusal pointing to --leave", err, out)
	}
}
