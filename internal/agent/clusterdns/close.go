package clusterdns

import (
	"net"
	"net/netip"
	"slices"

	"github.com/miekg/dns"
)

// CloseAddrs stops DNS at the given addresses (the node lost its address
// of a family the cluster dropped): their sockets close and leave l, and
// Serve does not report the end of their servers as a failure. The other
// addresses are served on, untouched. It returns the number of sockets
// closed.
func (l *Listeners) CloseAddrs(addrs []netip.Addr) int {
	at := func(a net.Addr) bool {
		ap, err := netip.ParseAddrPort(a.String())
		return err == nil && slices.Contains(addrs, ap.Addr().Unmap())
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dropped == nil {
		l.dropped = map[any]bool{}
	}
	n := 0
	l.UDP = slices.DeleteFunc(l.UDP, func(c net.PacketConn) bool {
		if !at(c.LocalAddr()) {
			return false
		}
		l.dropped[c] = true
		_ = c.Close()
		n++
		return true
	})
	l.TCP = slices.DeleteFunc(l.TCP, func(c net.Listener) bool {
		if !at(c.Addr()) {
			return false
		}
		l.dropped[c] = true
		_ = c.Close()
		n++
		return true
	})
	return n
}

// sockets are the listeners' sockets now.
func (l *Listeners) sockets() ([]net.PacketConn, []net.Listener) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.UDP), slices.Clone(l.TCP)
}

// wasDropped reports whether s serves a socket CloseAddrs closed.
func (l *Listeners) wasDropped(s *dns.Server) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.PacketConn != nil && l.dropped[s.PacketConn] {
		return true
	}
	return s.Listener != nil && l.dropped[s.Listener]
}
