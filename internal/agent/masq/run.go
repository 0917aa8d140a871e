package masq

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/duet-net/duet/internal/nft"
	"github.com/fsnotify/fsnotify"
	"k8s.io/utils/clock"
)

// A change to the file is read once it is whole. A file replaced whole
// (renamed into place, as editors and configuration management save, or
// swapped in through a ConfigMap volume's "..data" symlink) is read after
// burstDelay, which gathers the events of one save into one read. A file
// written in place may be read half-written (`nonMasqueradeCIDRs:` with
// its list still to come means "masquerade everything"): it is read once
// it has not changed for settleDelay.
const (
	burstDelay  = 100 * time.Millisecond
	settleDelay = time.Second
)

// Options configure Run.
type Options struct {
	// NetNS is the network namespace to program: a name under
	// /run/netns, a path, or "" for the caller's own.
	NetNS string
	// ConfigPath is the ip-masq-agent configuration file. It need not
	// exist (then the defaults apply); "" means the defaults, unwatched.
	ConfigPath string
	// ClusterCIDRs are the cluster's pod CIDRs, never masqueraded.
	ClusterCIDRs []netip.Prefix
	// ServiceCIDRs are the cluster's service CIDRs; with the default
	// configuration the IPv6 ones are not masqueraded.
	ServiceCIDRs []netip.Prefix
	// Log receives progress and problems; nil discards them.
	Log *slog.Logger
	// OnError is told of every failure: a configuration file that cannot
	// be used (the rules in force then stay exactly as they were) or a
	// kernel that refused the rules. Called from Run's goroutine.
	OnError func(error)
	// OnApplied is called with each configuration once it is in force:
	// the first one and every change. Called from Run's goroutine.
	OnApplied func(Config)

	nft   nft.Interface // tests: instead of the kernel
	clock clock.Clock   // tests: instead of the real clock
}

// Run programs the masquerade rules of o.NetNS from o.ConfigPath until ctx
// ends. It watches the file's directory, so that editors' renames and
// ConfigMap symlink swaps are seen: a file replaced whole applies within a
// second, one written in place once it has not changed for a second (see
// settleDelay). It re-reads the file and repairs the tables at every
// resyncInterval.
// Until a usable file has been read once, it changes nothing. It leaves
// the rules in place when it returns, as ip-masq-agent does; Cleanup
// removes them. It returns an error only if it cannot start.
func Run(ctx context.Context, o Options) error {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var p *Programmer
	if o.nft != nil {
		p = &Programmer{nft: o.nft}
	} else {
		var err error
		if p, err = New(o.NetNS); err != nil {
			return err
		}
	}
	defer p.Close()
	// A single-stack cluster's nodes get the tables of its family only.
	p.SetFamilies(familiesOf(o.ClusterCIDRs))
	log.Info("masquerading egress traffic", "config", o.ConfigPath, "clusterCIDRs", o.ClusterCIDRs, "serviceCIDRs", o.ServiceCIDRs)

	r := &runner{o: o, log: log, p: p, interval: DefaultResyncInterval}
	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	if o.ConfigPath != "" {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			return fmt.Errorf("watching %s: %w", o.ConfigPath, err)
		}
		defer w.Close()
		r.watcher, events, watchErrs = w, w.Events, w.Errors
		r.watch()
	}

	clk := o.clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	r.sync(true)
	resync := clk.NewTimer(r.interval)
	defer resync.Stop()
	change := &pending{clock: clk}
	defer change.stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			switch r.classify(ev) {
			case written:
				change.after(settleDelay)
			case replaced:
				change.after(burstDelay)
			case touched:
				if !change.waiting() {
					change.after(burstDelay)
				}
			}
		case err, ok := <-watchErrs:
			if !ok {
				watchErrs = nil
				continue
			}
			log.Warn("watching the masquerade config; changes wait for the next resync", "path", o.ConfigPath, "err", err)
		case <-change.C():
			if !change.ready() {
				continue
			}
			before := r.interval
			r.sync(false)
			if r.interval != before {
				resync.Stop()
				resync.Reset(r.interval)
			}
		case <-resync.C():
			r.watch()
			switch {
			case !change.waiting():
				r.sync(true)
			case r.applied:
				// The file is changing: it is read once still, and
				// meanwhile the rules in force are kept.
				r.reconcile(r.current)
			}
			resync.Reset(r.interval)
		}
	}
}

// pending is a change to the file waiting to be read.
type pending struct {
	clock clock.Clock
	timer clock.Timer
	due   time.Time // zero: nothing waits
}

// after makes the read due d from now, earlier or later than it was.
func (p *pending) after(d time.Duration) {
	p.due = p.clock.Now().Add(d)
	p.arm()
}

func (p *pending) arm() {
	d := p.due.Sub(p.clock.Now())
	if p.timer == nil {
		p.timer = p.clock.NewTimer(d)
		return
	}
	p.timer.Stop()
	p.timer.Reset(d)
}

func (p *pending) waiting() bool { return !p.due.IsZero() }

// C fires when the read may be due; it is nil while nothing waits.
func (p *pending) C() <-chan time.Time {
	if !p.waiting() {
		return nil
	}
	return p.timer.C()
}

// ready says whether the read is due, once C fired. A timer that fired
// for an earlier due time is armed again.
func (p *pending) ready() bool {
	if !p.waiting() {
		return false
	}
	if p.clock.Now().Before(p.due) {
		p.arm()
		return false
	}
	p.due = time.Time{}
	return true
}

func (p *pending) stop() {
	if p.timer != nil {
		p.timer.Stop()
	}
}

// Cleanup deletes the masquerade tables of a network namespace, if it has
// them: for shutdown with cleanup and for removing a node.
func Cleanup(netns string) error {
	p, err := New(netns)
	if err != nil {
		return err
	}
	defer p.Close()
	return p.Remove()
}

type runner struct {
	o        Options
	log      *slog.Logger
	p        *Programmer
	watcher  *fsnotify.Watcher
	watching bool

	current  Config
	applied  bool // current is in force
	interval time.Duration
}

// watch watches the file's directory, not the file: an atomic rename or
// a symlink swap replaces the inode a file watch would be holding. A
// directory that does not exist yet is retried at every resync.
func (r *runner) watch() {
	if r.watcher == nil || r.watching {
		return
	}
	dir := filepath.Dir(r.o.ConfigPath)
	if err := r.watcher.Add(dir); err != nil {
		r.log.Warn("cannot watch the masquerade config's directory; changes wait for the next resync", "dir", dir, "err", err)
		return
	}
	r.watching = true
}

// How an event in the directory changes the file.
type changeKind int

const (
	unrelated changeKind = iota
	written              // written in place: perhaps not whole yet
	replaced             // renamed into place, or swapped with the ConfigMap's "..data"
	touched              // removed, renamed away, its mode changed
)

// classify tells how an event in the directory may have changed the file:
// an event of the file itself, or of the "..data"-style entries through
// which a Kubernetes ConfigMap volume swaps all its files at once. A
// rename into place reads as the creation of the file (inotify's
// IN_MOVED_TO); a file created and then written is written in place.
func (r *runner) classify(ev fsnotify.Event) changeKind {
	base := filepath.Base(ev.Name)
	switch {
	case strings.HasPrefix(base, ".."):
		return replaced
	case base != filepath.Base(r.o.ConfigPath):
		return unrelated
	case ev.Has(fsnotify.Write):
		return written
	case ev.Has(fsnotify.Create):
		return replaced
	}
	return touched
}

// sync reads the file and programs it: incrementally after a change, with
// a check of the kernel's tables on resyncs.
func (r *runner) sync(resync bool) {
	c := DefaultConfig()
	if r.o.ConfigPath != "" {
		var err error
		if c, err = Load(r.o.ConfigPath); err != nil {
			r.fail(err)
			if resync && r.applied {
				// Keep what is in force, including against tampering.
				r.reconcile(r.current)
			}
			return
		}
	}
	var ok bool
	if resync {
		ok = r.reconcile(c)
	} else if err := r.p.Apply(c.Rules(r.o.ClusterCIDRs, r.o.ServiceCIDRs)); err != nil {
		r.fail(err)
	} else {
		ok = true
	}
	if !ok {
		return
	}
	r.interval = c.ResyncInterval
	if r.applied && c.Equal(r.current) {
		return
	}
	r.current, r.applied = c, true
	var v4, v6 int
	for _, p := range c.NonMasqueradeCIDRs {
		if p.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	r.log.Info("masquerade config in force",
		"path", r.o.ConfigPath, "defaultNonMasqueradeCIDRs", c.DefaultNonMasquerade,
		"nonMasqueradeIPv4CIDRs", v4, "nonMasqueradeIPv6CIDRs", v6,
		"masqLinkLocal", c.MasqLinkLocal, "masqLinkLocalIPv6", c.MasqLinkLocalIPv6,
		"resyncInterval", c.ResyncInterval)
	if r.o.OnApplied != nil {
		r.o.OnApplied(c)
	}
}

func (r *runner) reconcile(c Config) bool {
	repaired, err := r.p.Reconcile(c.Rules(r.o.ClusterCIDRs, r.o.ServiceCIDRs))
	if err != nil {
		r.fail(err)
		return false
	}
	if len(repaired) > 0 {
		r.log.Warn("masquerade tables were changed behind Duet's back; rebuilt them", "families", repaired, "table", TableName)
	}
	return true
}

func (r *runner) fail(err error) {
	r.log.Error("masquerade rules not updated", "err", err)
	if r.o.OnError != nil {
		r.o.OnError(err)
	}
}
