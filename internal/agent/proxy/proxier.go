package proxy

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/duet-net/duet/internal/nft"
)

// Proxier programs one family's table. It keeps a model of what it
// programmed; Sync sends only the difference from the desired ports, and
// Repair compares the model with the kernel's table and fixes what was
// changed behind its back. Its methods may be called from any goroutine.
type Proxier struct {
	fam    Family
	log    *slog.Logger
	layout layout
	nft    nft.Interface
	// deleteFlows deletes the conntrack entries of UDP flows.
	deleteFlows func(map[flow]bool) error

	mu    sync.Mutex
	ports map[ServicePortName]ServicePort // as last given to Sync
	// classes counts the programmed ports of each class (number of
	// endpoints); the skeleton has a set and a rule for each class in
	// classOrder. A new class's rule is appended to the services chain, and
	// a class left empty stays until the next full sync: rewriting that
	// chain costs the kernel a walk of the endpoints map per rule (~15 ms
	// at 10,000 services), which a deployment scaling through endpoint
	// counts would otherwise pay at every step.
	classes    map[int]int
	classOrder []int
	// owners are the ports that claim each frontend, by name: the first
	// serves it. Two Services may claim one external IP and port.
	owners map[string][]ServicePortName
	// staleFlows are UDP flows to endpoints that left, whose conntrack
	// entries are still to delete.
	staleFlows map[flow]bool
	st         *state
	// synced says st is what the kernel has. It is false until the first
	// sync, and after a batch failed: the next sync then reads the table
	// and starts from what is there.
	synced bool
}

// NewProxier returns the proxier of family fam in the namespace
// o.NetNS. It reads o.NodeIPs and o.ClusterCIDRs of its family only. It
// changes nothing until the first Sync, which adopts what an earlier
// proxier left in the table (so that a restart does not disturb
// connections nor forget affinity), changing only what differs.
func NewProxier(fam Family, o Options) (*Proxier, error) {
	if fam != IPv4 && fam != IPv6 {
		return nil, fmt.Errorf("unknown address family %v", fam)
	}
	c, err := nft.NewAt(o.NetNS)
	if err != nil {
		return nil, fmt.Errorf("%s proxy: %w", fam, err)
	}
	p := newProxier(fam, o, c)
	p.deleteFlows = func(flows map[flow]bool) error {
		_, err := deleteFlows(o.NetNS, fam, flows)
		return err
	}
	return p, nil
}

// newProxier returns a proxier that programs n, and leaves conntrack
// alone.
func newProxier(fam Family, o Options, n nft.Interface) *Proxier {
	l := layout{fam: fam}
	for _, a := range o.NodeIPs {
		if fam.Has(a) && !slices.Contains(l.nodeIPs, a) {
			l.nodeIPs = append(l.nodeIPs, a)
		}
	}
	for _, p := range o.ClusterCIDRs {
		if fam.Has(p.Addr()) {
			l.clusterCIDRs = append(l.clusterCIDRs, p.Masked())
		}
	}
	slices.SortFunc(l.nodeIPs, netip.Addr.Compare)
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Proxier{fam: fam, log: log.With("family", fam.String()), layout: l, nft: n,
		deleteFlows: func(map[flow]bool) error { return nil },
		ports:       map[ServicePortName]ServicePort{}, classes: map[int]int{}, owners: map[string][]ServicePortName{},
		staleFlows: map[flow]bool{}}
}

// Close releases the netlink socket; the table stays as it is.
func (p *Proxier) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nft.Close()
}

// Sync makes the table serve desired (keyed by the ports' names), in one
// transaction, and returns the number of objects it changed. Only ports
// that differ from the previous Sync are looked at closely, so a sync
// costs what changed, not what exists. Ports that cannot be programmed
// (an address of the other family, port 0) are logged and left out.
//
// Sync keeps the ports it is given, slices included (it copies only
// ports that are not normalized, see ServicePort.Normalize): give a
// changed port new slices rather than change the ones given before. The
// map itself may be reused. A port whose slices are the very ones Sync
// kept is compared without reading them, so that a sync of 10,000 ports of
// which one changed costs little more than that one.
func (p *Proxier) Sync(desired map[ServicePortName]ServicePort) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := time.Now()
	if !p.synced {
		p.setPorts(desired)
		n, err := p.full("sync")
		observeSync(p.fam, "full", start, err)
		return n, err
	}

	t := &changes{}
	affected := map[ServicePortName]bool{}
	classesBefore := len(p.classOrder)
	before, kept := len(p.ports), 0 // kept: ports of p.ports still desired
	for name, sp := range desired {
		sp.Name = name
		old, had := p.ports[name]
		if had {
			kept++
			if old.same(&sp) {
				continue
			}
		}
		c := sp
		if !c.normalized() {
			c = sp.clone()
			c.Normalize()
		}
		if had && old.equal(&c) {
			p.ports[name] = c // same content, and now the same slices
			continue
		}
		if had {
			p.unindex(&old, affected)
			p.layout.staleFlows(&old, &c, p.staleFlows)
		}
		p.ports[name] = c
		p.index(&c, affected)
		affected[name] = true
	}
	if kept < before {
		for name, old := range p.ports {
			if _, ok := desired[name]; !ok {
				p.unindex(&old, affected)
				p.layout.staleFlows(&old, nil, p.staleFlows)
				delete(p.ports, name)
				affected[name] = true
			}
		}
	}
	var touched []*fragment
	for name := range affected {
		var f *fragment
		if sp, ok := p.ports[name]; ok {
			f = p.render(&sp)
		}
		if f != nil {
			touched = append(touched, f)
		}
		p.st.replace(name.String(), f, t)
	}
	if len(p.classOrder) != classesBefore {
		sk := p.layout.skeleton(p.classOrder)
		touched = append(touched, sk)
		p.st.replace("", sk, t)
	}
	if !t.empty() {
		if err := p.apply(t); err != nil {
			p.synced = false
			observeSync(p.fam, "incremental", start, err)
			return 0, fmt.Errorf("%s proxy: %w", p.fam, err)
		}
		for _, f := range touched {
			f.stripExprs()
		}
		observeSync(p.fam, "incremental", start, nil)
		p.log.Debug("proxy rules synced", "changes", t.count(), "took", time.Since(start))
	}
	// Only now that no new flow can reach them.
	if len(p.staleFlows) > 0 {
		if err := p.deleteFlows(p.staleFlows); err != nil {
			return t.count(), fmt.Errorf("%s proxy: %w", p.fam, err)
		}
		clear(p.staleFlows)
	}
	return t.count(), nil
}

// index counts a port in its class and claims its frontends; ports whose
// claim on a frontend is won or lost by it are noted in affected.
func (p *Proxier) index(sp *ServicePort, affected map[ServicePortName]bool) {
	if sp.validate(p.fam) != nil {
		return
	}
	if c, ok := classOf(sp); ok {
		if _, known := p.classes[c]; !known {
			p.classOrder = append(p.classOrder, c)
		}
		p.classes[c]++
	}
	for _, fe := range p.layout.frontends(sp) {
		cs := p.owners[fe.key]
		i, _ := slices.BinarySearchFunc(cs, sp.Name, ServicePortName.compare)
		if i == 0 && len(cs) > 0 {
			affected[cs[0]] = true // loses it
		}
		p.owners[fe.key] = slices.Insert(cs, i, sp.Name)
	}
}

func (p *Proxier) unindex(sp *ServicePort, affected map[ServicePortName]bool) {
	if sp.validate(p.fam) != nil {
		return
	}
	if c, ok := classOf(sp); ok {
		p.classes[c]--
	}
	for _, fe := range p.layout.frontends(sp) {
		cs := p.owners[fe.key]
		i, found := slices.BinarySearchFunc(cs, sp.Name, ServicePortName.compare)
		if !found {
			continue
		}
		cs = slices.Delete(cs, i, i+1)
		if i == 0 && len(cs) > 0 {
			affected[cs[0]] = true // wins it
		}
		if len(cs) == 0 {
			delete(p.owners, fe.key)
		} else {
			p.owners[fe.key] = cs
		}
	}
}

// render is a port's fragment, with the frontends it wins.
func (p *Proxier) render(sp *ServicePort) *fragment {
	if err := sp.validate(p.fam); err != nil {
		p.log.Error("service port left out", "port", sp.Name.String(), "err", err)
		return nil
	}
	return p.layout.servicePort(sp, func(fe frontend) bool {
		cs := p.owners[fe.key]
		if len(cs) > 0 && cs[0] == sp.Name {
			return true
		}
		p.log.Warn("two service ports claim one frontend; the first by name serves it",
			"port", sp.Name.String(), "frontend", fe.String(), "servedBy", cs[0].String())
		return false
	})
}

func (p *Proxier) setPorts(desired map[ServicePortName]ServicePort) {
	p.ports = make(map[ServicePortName]ServicePort, len(desired))
	for name, sp := range desired {
		c := sp
		if !c.normalized() {
			c = sp.clone()
			c.Normalize()
		}
		c.Name = name
		p.ports[name] = c
	}
}

// Repair reads the table back once and fixes, in one transaction,
// whatever differs from the model: chains, rules or elements deleted or
// changed behind the proxier's back, a table deleted whole. It returns the
// number of objects it changed; 0 is the normal outcome.
func (p *Proxier) Repair() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := time.Now()
	n, err := p.full("repair")
	observeSync(p.fam, "repair", start, err)
	return n, err
}

// full renders the whole model from p.ports, reads the table, and sends
// the difference.
func (p *Proxier) full(why string) (int, error) {
	start := time.Now()
	st := newState()
	scratch := &changes{}
	p.classes, p.classOrder, p.owners = map[int]int{}, nil, map[string][]ServicePortName{}
	for _, sp := range p.ports {
		p.index(&sp, map[ServicePortName]bool{})
	}
	slices.Sort(p.classOrder)
	for _, sp := range p.ports {
		if f := p.render(&sp); f != nil {
			st.replace(sp.Name.String(), f, scratch)
		}
	}
	st.replace("", p.layout.skeleton(p.classOrder), scratch)
	have, err := p.observe()
	if err != nil {
		p.synced = false
		return 0, fmt.Errorf("%s proxy: reading table %s: %w", p.fam, TableName, err)
	}
	t := &changes{}
	st.diffObserved(have, t)
	if !t.empty() {
		if err := p.apply(t); err != nil {
			p.synced = false
			return 0, fmt.Errorf("%s proxy (%s): %w", p.fam, why, err)
		}
	}
	for _, f := range st.frags {
		f.stripExprs()
	}
	p.st, p.synced = st, true
	n := t.count()
	switch {
	case why == "repair" && n > 0:
		p.log.Warn("proxy rules changed behind Duet's back, repaired", "changes", n, "took", time.Since(start))
	case n > 0:
		p.log.Info("proxy rules synced from the table", "reason", why, "ports", len(p.ports), "changes", n, "took", time.Since(start))
	}
	return n, nil
}

// Remove deletes the proxier's table. A later Sync builds it again.
func (p *Proxier) Remove() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.synced = false
	// Adding the table first makes deleting it work whether it exists or
	// not.
	var tx nft.Transaction
	tx.AddTable(p.layout.table())
	tx.DeleteTable(p.layout.table())
	if err := p.nft.Run(&tx); err != nil {
		return fmt.Errorf("%s proxy: deleting table %s: %w", p.fam, TableName, err)
	}
	return nil
}

// apply commits t as one transaction.
func (p *Proxier) apply(t *changes) error {
	t.sort()
	return p.nft.Run(t.transaction(p.layout.table()))
}

// observe lists the table: what a repair compares with the model. The
// elements of dynamic sets are the datapath's and are left out.
func (p *Proxier) observe() (*observed, error) {
	o := &observed{chains: map[string]*observedChain{}, sets: map[string]nft.Set{}, elems: map[string]map[string]elemVal{}}
	l, err := p.nft.List(p.layout.table())
	if err != nil || l == nil {
		return o, err
	}
	o.table = true
	for n, c := range l.Chains {
		o.chains[n] = &observedChain{hook: c.Hook, rules: c.Rules}
	}
	for n, s := range l.Sets {
		o.sets[n] = s
		if dynamic(s) {
			continue
		}
		elems := map[string]elemVal{}
		err := p.nft.ListElements(p.layout.table(), n, func(e nft.Element) {
			elems[e.Key] = elemVal{data: e.Data, goTo: e.Goto}
		})
		if err != nil {
			return nil, err
		}
		o.elems[n] = elems
	}
	return o, nil
}
