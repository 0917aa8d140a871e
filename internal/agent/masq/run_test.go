package masq

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/duet-net/duet/internal/nft"
)

// runFake runs Run against a fake kernel until the test ends, and returns
// the fake and channels of what Run reported.
func runFake(t *testing.T, path string) (*nft.Fake, chan Config, chan error) {
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
			nft: b,
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
	select {
	case c := <-applied:
		if d := time.Since(since); d > time.Second {
			t.Errorf("the change was applied after %v, want within a second", d)
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

	// Writing in place (no rename) is seen too.
	start = time.Now()
	if err := os.WriteFile(path, []byte("masqLinkLocal: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c := waitApplied(t, applied, errs, start); !c.DefaultNonMasquerade {
		t.Fatalf("in-place write applied %+v, want the default CIDRs", c)
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

func TestRunResyncRepairsTheTables(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	writeAtomically(t, path, "resyncInterval: 1s\n")
	b, applied, errs := runFake(t, path)
	waitApplied(t, applied, errs, time.Now())
	want := dump(t, b)
	tamper(t, b, func(tx *nft.Transaction) { tx.DeleteTable(table(nft.IPv6)) })
	deadline := time.Now().Add(10 * time.Second)
	for dump(t, b) != want {
		if time.Now().After(deadline) {
			t.Fatalf("a deleted table was not rebuilt by resyncs:\n%s", dump(t, b))
		}
		time.Sleep(10 * time.Millisecond) // polling the fake, with a deadline
	}

	// A bad file does not stop repairs: what is in force stays in force.
	writeAtomically(t, path, "resyncInterval: 1s\nfoo: bar\n")
	waitError(t, applied, errs)
	tamper(t, b, func(tx *nft.Transaction) { tx.FlushChain(table(nft.IPv4), ChainName) })
	deadline = time.Now().Add(10 * time.Second)
	for {
		o, _ := (&Programmer{nft: b}).observe(nft.IPv4)
		if o.intact && dump(t, b) == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a broken chain was not repaired while the file is bad:\n%s", dump(t, b))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
