package masq

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/duet-net/duet/internal/nft"
	"github.com/fsnotify/fsnotify"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

// runFake runs Run against a fake kernel until the test ends, and returns
// the fake and channels of what Run reported.
func runFake(t *testing.T, path string) (*nft.Fake, chan Config, chan error) {
	t.Helper()
	return runFakeWith(t, path, nil)
}

// runFakeWith is runFake with a clock of the test's (nil: the real one).
func runFakeWith(t *testing.T, path string, clk clock.Clock) (*nft.Fake, chan Config, chan error) {
	t.Helper()
	b := nft.NewFake()
	applied, errs := make(chan Config, 16), make(chan error, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{
			ConfigPath:   path,
			ClusterCIDRs: testPods,
			ServiceCIDRs: testServices,
			// Never block Run: a test that stops reading must not hang it.
			OnApplied: func(c Config) {
				select {
				case applied <- c:
				default:
				}
			},
			OnError: func(err error) {
				select {
				case errs <- err:
				default:
				}
			},
			nft:   b,
			clock: clk,
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if !b.Closed() {
			t.Error("Run did not close its programmer")
		}
	})
	return b, applied, errs
}

// reporting sets o's callbacks to feed channels. They never block Run: a
// test that stops reading must not hang it.
func reporting(o Options) (Options, chan Config, chan error) {
	applied, errs := make(chan Config, 16), make(chan error, 16)
	o.OnApplied = func(c Config) {
		select {
		case applied <- c:
		default:
		}
	}
	o.OnError = func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	return o, applied, errs
}

// writeAtomically replaces path as editors and config management do: a
// new file renamed over the old one.
func writeAtomically(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// waitApplied waits for the next applied config and checks that it came
// within the second a change may take.
func waitApplied(t *testing.T, applied chan Config, errs chan error, since time.Time) Config {
	t.Helper()
	return waitAppliedBetween(t, applied, errs, since, 0, time.Second)
}

// waitAppliedBetween waits for the next applied config and checks that it
// came between min and max after since.
func waitAppliedBetween(t *testing.T, applied chan Config, errs chan error, since time.Time, min, max time.Duration) Config {
	t.Helper()
	select {
	case c := <-applied:
		if d := time.Since(since); d < min || d > max {
			t.Errorf("the change was applied after %v, want between %v and %v", d, min, max)
		}
		return c
	case err := <-errs:
		t.Fatalf("Run reported %v, want a config applied", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no config applied within 10s")
	}
	return Config{}
}

func waitError(t *testing.T, applied chan Config, errs chan error) error {
	t.Helper()
	select {
	case c := <-applied:
		t.Fatalf("Run applied %+v, want an error", c)
	case err := <-errs:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("no error reported within 10s")
	}
	return nil
}

func TestRunReloadsAChangedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	writeAtomically(t, path, "nonMasqueradeCIDRs: [10.0.0.0/8]\n")
	b, applied, errs := runFake(t, path)
	if c := waitApplied(t, applied, errs, time.Now()); c.DefaultNonMasquerade || len(c.NonMasqueradeCIDRs) != 1 {
		t.Fatalf("first config %+v", c)
	}
	wantDump(t, b, `ip never-masquerade: 10.244.0.0/16
ip non-masquerade: 10.0.0.0/8, 169.254.0.0/16
ip6 never-masquerade: fd00:10:244::/56
ip6 non-masquerade: fe80::/10
`)

	start := time.Now()
	writeAtomically(t, path, "nonMasqueradeCIDRs: [10.0.0.0/8, 2001:db8::/32]\nmasqLinkLocal: true\n")
	waitApplied(t, applied, errs, start)
	wantDump(t, b, `ip never-masquerade: 10.244.0.0/16
ip non-masquerade: 10.0.0.0/8
ip6 never-masquerade: fd00:10:244::/56
ip6 non-masquerade: 2001:db8::/32, fe80::/10
`)
	if got := opKinds(b); got != "delete ip non-masquerade 169.254.0.0/16; add ip6 non-masquerade 2001:db8::/32" {
		t.Errorf("the reload sent %q, want only the differences", got)
	}

	// Writing in place (no rename) is seen too, once the file is still.
	if err := os.WriteFile(path, []byte("masqLinkLocal: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if c := waitAppliedBetween(t, applied, errs, start, settleDelay-burstDelay, settleDelay+time.Second); !c.DefaultNonMasquerade {
		t.Fatalf("in-place write applied %+v, want the default CIDRs", c)
	}
}

// A file written in place is applied only once it has been still for a
// while: the half written by a writer that pauses after a key (here
// `nonMasqueradeCIDRs:` alone, which means "masquerade everything") is
// never applied.
func TestRunWaitsForAFileWrittenInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	writeAtomically(t, path, "nonMasqueradeCIDRs: [10.0.0.0/8]\n")
	b, applied, errs := runFake(t, path)
	waitApplied(t, applied, errs, time.Now())

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("nonMasqueradeCIDRs:\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the writer's pause, part of the scenario
	if _, err := f.WriteString("  - 192.168.0.0/16\n"); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	c := waitAppliedBetween(t, applied, errs, written, settleDelay-burstDelay, settleDelay+time.Second)
	if len(c.NonMasqueradeCIDRs) != 1 || c.NonMasqueradeCIDRs[0] != netip.MustParsePrefix("192.168.0.0/16") {
		t.Fatalf("applied %v while the file was being written, want only the whole file", c.NonMasqueradeCIDRs)
	}
	if !strings.Contains(dump(t, b), "ip non-masquerade: 169.254.0.0/16, 192.168.0.0/16\n") {
		t.Fatalf("tables:\n%s", dump(t, b))
	}
}

func TestRunKeepsTheRulesOfABadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	writeAtomically(t, path, "nonMasqueradeCIDRs: [10.0.0.0/8]\n")
	b, applied, errs := runFake(t, path)
	waitApplied(t, applied, errs, time.Now())
	before, commits := dump(t, b), b.Transactions()

	writeAtomically(t, path, "nonMasqueradeCIDRs: [10.0.0.1/8]\n")
	err := waitError(t, applied, errs)
	if !strings.Contains(err.Error(), `nonMasqueradeCIDRs[0]: CIDR "10.0.0.1/8" is not aligned`) || !strings.Contains(err.Error(), path) {
		t.Fatalf("the error does not name the file, field and reason: %v", err)
	}
	if dump(t, b) != before || b.Transactions() != commits {
		t.Fatalf("a bad file changed the tables:\n%s", dump(t, b))
	}

	start := time.Now()
	writeAtomically(t, path, "nonMasqueradeCIDRs: [10.0.0.0/9]\n")
	waitApplied(t, applied, errs, start)
	if !strings.Contains(dump(t, b), "ip non-masquerade: 10.0.0.0/9, 169.254.0.0/16\n") {
		t.Fatalf("the fixed file was not applied:\n%s", dump(t, b))
	}
}

// A resyncInterval below a second is refused like any other mistake: the
// rules and the pace in force stay (1ns used to be taken, and a core spent
// re-reading the file and the tables).
func TestRunRefusesATooShortResyncInterval(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	writeAtomically(t, path, "nonMasqueradeCIDRs: [10.0.0.0/8]\nresyncInterval: 1m\n")
	b, applied, errs := runFake(t, path)
	waitApplied(t, applied, errs, time.Now())
	before, commits := dump(t, b), b.Transactions()

	writeAtomically(t, path, "nonMasqueradeCIDRs: [192.168.0.0/16]\nresyncInterval: 1ns\n")
	err := waitError(t, applied, errs)
	if !strings.Contains(err.Error(), `resyncInterval: must be at least 1s, got "1ns"`) || !strings.Contains(err.Error(), path) {
		t.Fatalf("the error does not name the file, field and reason: %v", err)
	}
	if dump(t, b) != before || b.Transactions() != commits {
		t.Fatalf("a refused file changed the tables:\n%s", dump(t, b))
	}
}

func TestRunBadFileAtStartChangesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	writeAtomically(t, path, "nonMasqueradeCIDR: [10.0.0.0/8]\n")
	b, applied, errs := runFake(t, path)
	if err := waitError(t, applied, errs); !strings.Contains(err.Error(), `unknown key "nonMasqueradeCIDR"`) {
		t.Fatalf("error %v", err)
	}
	if b.Transactions() != 0 {
		t.Fatalf("Run programmed %q from a bad file", opKinds(b))
	}
	start := time.Now()
	writeAtomically(t, path, "nonMasqueradeCIDRs: [10.0.0.0/8]\n")
	waitApplied(t, applied, errs, start)
}

func TestRunMissingFileMeansDefaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	b, applied, errs := runFake(t, path)
	if c := waitApplied(t, applied, errs, time.Now()); !c.Equal(DefaultConfig()) {
		t.Fatalf("applied %+v, want the defaults", c)
	}
	start := time.Now()
	writeAtomically(t, path, "nonMasqueradeCIDRs: []\n")
	waitApplied(t, applied, errs, start)
	start = time.Now()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if c := waitApplied(t, applied, errs, start); !c.Equal(DefaultConfig()) {
		t.Fatalf("after removing the file applied %+v, want the defaults", c)
	}
	if !strings.Contains(dump(t, b), "ip non-masquerade: 10.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16\n") {
		t.Fatalf("tables:\n%s", dump(t, b))
	}
}

// TestRunConfigMapUpdate swaps files the way the kubelet updates a
// ConfigMap volume: the file is a symlink through "..data", itself a
// symlink to a timestamped directory, and an update renames a new
// "..data" over the old one. The file's own inode never changes.
func TestRunConfigMapUpdate(t *testing.T) {
	dir := t.TempDir()
	version := func(name, data string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "config"), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_01_01_00_00_00.1", "nonMasqueradeCIDRs: [10.0.0.0/8]\n")
	if err := os.Symlink("..data/config", filepath.Join(dir, "config")); err != nil {
		t.Fatal(err)
	}
	b, applied, errs := runFake(t, filepath.Join(dir, "config"))
	waitApplied(t, applied, errs, time.Now())
	start := time.Now()
	version("..2026_01_01_00_01_00.2", "nonMasqueradeCIDRs: [192.168.0.0/16]\n")
	waitApplied(t, applied, errs, start)
	if !strings.Contains(dump(t, b), "ip non-masquerade: 169.254.0.0/16, 192.168.0.0/16\n") {
		t.Fatalf("tables:\n%s", dump(t, b))
	}
}

// eventually polls cond until it holds, or fails the test after a
// deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
}

// waitTimers waits until Run has n timers set on the clock: the resync's,
// and one for a change of the file it has seen.
func waitTimers(t *testing.T, clk *clocktesting.FakeClock, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d timers set", n), func() bool { return clk.Waiters() == n })
}

func TestRunResyncRepairsTheTables(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	writeAtomically(t, path, "resyncInterval: 1m\n")
	clk := clocktesting.NewFakeClock(time.Now())
	b, applied, errs := runFakeWith(t, path, clk)
	waitApplied(t, applied, errs, time.Now())
	waitTimers(t, clk, 1)
	want := dump(t, b)
	tamper(t, b, func(tx *nft.Transaction) { tx.DeleteTable(table(nft.IPv6)) })
	clk.Step(time.Minute)
	eventually(t, "a deleted table rebuilt by the resync", func() bool { return dump(t, b) == want })

	// A bad file does not stop repairs: what is in force stays in force.
	writeAtomically(t, path, "resyncInterval: 1m\nfoo: bar\n")
	waitTimers(t, clk, 2)
	clk.Step(burstDelay)
	waitError(t, applied, errs)
	tamper(t, b, func(tx *nft.Transaction) { tx.FlushChain(table(nft.IPv4), ChainName) })
	clk.Step(time.Minute - burstDelay)
	eventually(t, "a broken chain repaired while the file is bad", func() bool {
		o, _ := (&Programmer{nft: b}).observe(nft.IPv4)
		return o.intact && dump(t, b) == want
	})
}

// A resync that comes while the file is being written in place checks
// the rules in force and leaves the file until it is still.
func TestRunResyncLeavesAFileBeingWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	writeAtomically(t, path, "nonMasqueradeCIDRs: [10.0.0.0/8]\n")
	clk := clocktesting.NewFakeClock(time.Now())
	b, applied, errs := runFakeWith(t, path, clk)
	waitApplied(t, applied, errs, time.Now())
	waitTimers(t, clk, 1)

	clk.Step(DefaultResyncInterval - settleDelay/2)
	if err := os.WriteFile(path, []byte("nonMasqueradeCIDRs:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitTimers(t, clk, 2)
	lists := b.Lists()
	clk.Step(settleDelay / 2) // the resync, before the file is still
	eventually(t, "the resync's check of the tables", func() bool { return b.Lists() >= lists+len(nft.Families) })
	if err := os.WriteFile(path, []byte("nonMasqueradeCIDRs:\n  - 192.168.0.0/16\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Whichever of the second write and the first write's due time Run
	// sees first, the file it reads is whole; stepping until it does.
	var c Config
	eventually(t, "the whole file applied", func() bool {
		clk.Step(settleDelay)
		select {
		case c = <-applied:
			return true
		case err := <-errs:
			t.Fatalf("Run reported %v", err)
		default:
		}
		return false
	})
	if len(c.NonMasqueradeCIDRs) != 1 || c.NonMasqueradeCIDRs[0] != netip.MustParsePrefix("192.168.0.0/16") {
		t.Fatalf("applied %v, want the whole file and nothing before it", c.NonMasqueradeCIDRs)
	}
}

func TestPendingChange(t *testing.T) {
	start := time.Now()
	clk := clocktesting.NewFakeClock(start)
	p := &pending{clock: clk}
	fired := func() bool {
		select {
		case <-p.C():
			return p.ready()
		default:
			return false
		}
	}
	if p.C() != nil || p.waiting() {
		t.Fatal("a new pending change is waiting")
	}

	// Writes in place push the read back until the file is still.
	p.after(settleDelay)
	clk.Step(settleDelay / 2)
	p.after(settleDelay)
	clk.Step(settleDelay / 2)
	if fired() {
		t.Fatal("read half a settleDelay after the last write")
	}
	clk.Step(settleDelay / 2)
	if !fired() || p.waiting() {
		t.Fatal("not read a settleDelay after the last write")
	}

	// A replacement while writes settle is read at once.
	p.after(settleDelay)
	clk.Step(burstDelay / 2)
	p.after(burstDelay)
	clk.Step(burstDelay)
	if !fired() {
		t.Fatal("a replaced file waited for the writes before it to settle")
	}

	// A timer that fired for an earlier due time is armed again.
	p.after(burstDelay)
	clk.Step(burstDelay)
	p.after(settleDelay) // the timer's value is stale now
	if fired() {
		t.Fatal("read at a stale due time")
	}
	clk.Step(settleDelay)
	if !fired() {
		t.Fatal("not read at the new due time")
	}
}

func TestClassify(t *testing.T) {
	dir := t.TempDir()
	r := &runner{o: Options{ConfigPath: filepath.Join(dir, "config")}}
	for _, tt := range []struct {
		name string
		ev   fsnotify.Event
		want changeKind
	}{
		{"a write in place", fsnotify.Event{Name: filepath.Join(dir, "config"), Op: fsnotify.Write}, written},
		{"a rename into place", fsnotify.Event{Name: filepath.Join(dir, "config"), Op: fsnotify.Create}, replaced},
		{"a ConfigMap's swap", fsnotify.Event{Name: filepath.Join(dir, "..data"), Op: fsnotify.Create}, replaced},
		{"the file removed", fsnotify.Event{Name: filepath.Join(dir, "config"), Op: fsnotify.Remove}, touched},
		{"the file renamed away", fsnotify.Event{Name: filepath.Join(dir, "config"), Op: fsnotify.Rename}, touched},
		{"its mode changed", fsnotify.Event{Name: filepath.Join(dir, "config"), Op: fsnotify.Chmod}, touched},
		{"an editor's temporary file", fsnotify.Event{Name: filepath.Join(dir, ".config.swp"), Op: fsnotify.Write}, unrelated},
		{"another file", fsnotify.Event{Name: filepath.Join(dir, "other"), Op: fsnotify.Create}, unrelated},
	} {
		if got := r.classify(tt.ev); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
