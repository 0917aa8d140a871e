package ipam

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/alloc/boltstore"
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

// duet-ipam used to accept 0.0.0.0/0 and ::/0 and hand out 0.0.0.2/0: a
// range that cannot be a pod subnet is an invalid configuration, code 7,
// and nothing is reserved.
func TestPluginRefusesRangesThatCannotBePodSubnets(t *testing.T) {
	r := newPluginRun(t)
	for _, ranges := range []string{
		`[[{"subnet":"0.0.0.0/0"}]]`,
		`[[{"subnet":"10.244.1.0/24"}],[{"subnet":"::/0"}]]`,
		`[[{"subnet":"127.0.0.0/8"}]]`,
		`[[{"subnet":"fe80::/64"}]]`,
	} {
		r.out.Reset()
		var cniErr *types.Error
		err := r.p.Add(args("c1", r.stdin("1.1.0", `{"ranges":`+ranges+`}`, "")))
		if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, "].subnet: ") {
			t.Fatalf("ADD with ranges %s: %v (printed %q); want error code 7 naming the subnet field", ranges, err, r.out.String())
		}
		if r.out.Len() != 0 {
			t.Fatalf("ADD with ranges %s printed a result: %s", ranges, r.out.String())
		}
	}
}

// failingStore is a PodIPStore whose commits fail as a full disk fails
// them.
type failingStore struct{ alloc.PodIPStore }

func (s failingStore) Begin(writable bool) (alloc.PodIPTxn, error) {
	tx, err := s.PodIPStore.Begin(writable)
	return failingTxn{tx}, err
}

type failingTxn struct{ alloc.PodIPTxn }

func (t failingTxn) Commit() error {
	t.PodIPTxn.Rollback()
	return &alloc.StoreError{Op: "committing to /var/lib/cni/networks/pods/duet-ipam.db", Err: fmt.Errorf("write /var/lib/cni/networks/pods/duet-ipam.db: %w", syscall.ENOSPC)}
}

// A failure to keep or read the reservations is CNI's I/O failure, code 5,
// whichever verb meets it; it used to come out as 999 (internal error).
func TestStoreFailuresAreIOFailures(t *testing.T) {
	c, err := Parse([]byte(conf(`{"ranges":`+dualStack+`}`)), "")
	if err != nil {
		t.Fatal(err)
	}
	mem := alloc.NewMemPodIPStore()
	healthy, err := alloc.NewPodIPs(mem, c.RangeSets, alloc.PodIPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := healthy.Reserve(alloc.Attachment{ContainerID: "c1", IfName: "eth0"}, nil); err != nil {
		t.Fatal(err)
	}
	pol, err := alloc.NewPodIPs(failingStore{mem}, c.RangeSets, alloc.PodIPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, reserveErr := pol.Reserve(alloc.Attachment{ContainerID: "c2", IfName: "eth0"}, nil)
	_, releaseErr := pol.Release(alloc.Attachment{ContainerID: "c1", IfName: "eth0"})
	_, gcErr := pol.GC(nil)
	for verb, err := range map[string]error{"ADD": reserveErr, "DEL": releaseErr, "GC": gcErr} {
		var cniErr *types.Error
		got := failed(c, err)
		if !errors.As(got, &cniErr) || cniErr.Code != types.ErrIOFailure || !strings.Contains(cniErr.Msg, "duet-ipam: network pods: committing to ") || !strings.Contains(cniErr.Msg, "no space left on device") {
			t.Errorf("%s on a full disk: %v; want error code 5 saying so", verb, got)
		}
	}
	// The policy's own refusals are not I/O failures.
	full := alloc.NewMemPodIPStore()
	small, err := Parse([]byte(conf(`{"ranges":[[{"subnet":"10.0.0.0/30"}]]}`)), "")
	if err != nil {
		t.Fatal(err)
	}
	pol, _ = alloc.NewPodIPs(full, small.RangeSets, alloc.PodIPOptions{})
	pol.Reserve(alloc.Attachment{ContainerID: "c1", IfName: "eth0"}, nil)
	_, err = pol.Reserve(alloc.Attachment{ContainerID: "c2", IfName: "eth0"}, nil)
	var cniErr *types.Error
	if got := failed(small, err); errors.As(got, &cniErr) && cniErr.Code == types.ErrIOFailure {
		t.Fatalf("a full range was reported as an I/O failure: %v", got)
	}
}

// Waiting too long for another invocation's lock is "try again later".
func TestPluginLockTimeoutIsCode11(t *testing.T) {
	r := newPluginRun(t)
	r.p.LockTimeout = 20 * time.Millisecond
	holder, err := boltstore.Open(r.dir, "pods", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	var cniErr *types.Error
	err = r.p.Add(args("c1", r.stdin("1.1.0", `{"ranges":`+dualStack+`}`, "")))
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater {
		t.Fatalf("ADD while another invocation holds the lock: %v, want code 11", err)
	}
}

// Failing to open the store is an I/O failure too.
func TestPluginOpenFailureIsCode5(t *testing.T) {
	r := newPluginRun(t)
	if err := os.MkdirAll(filepath.Join(r.dir, "pods", boltstore.DBFile), 0o755); err != nil {
		t.Fatal(err)
	}
	var cniErr *types.Error
	err := r.p.Add(args("c1", r.stdin("1.1.0", `{"ranges":`+dualStack+`}`, "")))
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrIOFailure {
		t.Fatalf("ADD with a store that cannot be opened: %v, want code 5", err)
	}
}
