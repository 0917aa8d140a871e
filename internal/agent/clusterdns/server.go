package clusterdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
)

// Port is where cluster DNS listens: the kube-dns Service's port.
const Port = 53

// udpReceiveBuffer is the receive buffer of the UDP sockets: a few
// thousand questions, so that a burst (a node's pods starting together)
// or a pause of the server (a GC, a busy CPU) queues questions for
// milliseconds rather than dropping them, which costs the client a
// resend after seconds.
const udpReceiveBuffer = 4 << 20

// tcpIdleTimeout closes a client's TCP connection after this long without
// a question (RFC 7766 suggests seconds, not minutes).
const tcpIdleTimeout = 10 * time.Second

// Listeners are the sockets DNS is served on, UDP and TCP at each address.
type Listeners struct {
	UDP []net.PacketConn
	TCP []net.Listener

	// mu guards UDP and TCP once Serve runs, and dropped: the sockets
	// CloseAddrs closed (close.go).
	mu      sync.Mutex
	dropped map[any]bool
}

// Listen binds UDP and TCP at port on each address, in the network
// namespace at nsPath ("" for the process's own): the sockets stay in that
// namespace whichever thread serves them.
func Listen(nsPath string, addrs []netip.Addr, port int) (*Listeners, error) {
	l := &Listeners{}
	bind := func() error {
		for _, a := range addrs {
			hostPort := net.JoinHostPort(a.String(), strconv.Itoa(port))
			lc := net.ListenConfig{Control: freebind}
			ulc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
				return errors.Join(freebind(network, address, c), receiveBuffer(c, udpReceiveBuffer))
			}}
			pc, err := ulc.ListenPacket(context.Background(), "udp", hostPort)
			if err != nil {
				return fmt.Errorf("DNS on udp %s: %w", hostPort, err)
			}
			l.UDP = append(l.UDP, pc)
			// Port 0 picks the same port for TCP as for UDP.
			hostPort = pc.LocalAddr().String()
			tl, err := lc.Listen(context.Background(), "tcp", hostPort)
			if err != nil {
				return fmt.Errorf("DNS on tcp %s: %w", hostPort, err)
			}
			l.TCP = append(l.TCP, tl)
		}
		return nil
	}
	var err error
	if nsPath == "" {
		err = bind()
	} else {
		err = netns.Do(nsPath, bind)
	}
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// freebind lets a socket bind an address the node has not configured yet
// (IPv6 addresses in duplicate address detection, say).
func freebind(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if network == "udp6" || network == "tcp6" {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
		}
	})
	return errors.Join(err, serr)
}

// receiveBuffer sets a socket's receive buffer to size bytes: past the
// system's limit (net.core.rmem_max) when the process may (CAP_NET_ADMIN,
// as agents have), else up to it.
func receiveBuffer(c syscall.RawConn, size int) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size) != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, size)
		}
	})
	return errors.Join(err, serr)
}

// Close closes every socket.
func (l *Listeners) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.UDP {
		_ = c.Close()
	}
	for _, c := range l.TCP {
		_ = c.Close()
	}
}

// Addrs are the bound addresses, UDP first.
func (l *Listeners) Addrs() []net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []net.Addr
	for _, c := range l.UDP {
		out = append(out, c.LocalAddr())
	}
	for _, c := range l.TCP {
		out = append(out, c.Addr())
	}
	return out
}

// Serve answers DNS on every listener with h until ctx ends, then closes
// them.
func (l *Listeners) Serve(ctx context.Context, h dns.Handler, log *slog.Logger) {
	var servers []*dns.Server
	udp, tcp := l.sockets()
	for _, pc := range udp {
		servers = append(servers, &dns.Server{PacketConn: pc, Handler: h, UDPSize: EDNSSize, MsgAcceptFunc: accept})
	}
	for _, tl := range tcp {
		servers = append(servers, &dns.Server{Listener: tl, Handler: h, IdleTimeout: func() time.Duration { return tcpIdleTimeout },
			MsgAcceptFunc: accept})
	}
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Go(func() {
			if err := s.ActivateAndServe(); err != nil && ctx.Err() == nil && !l.wasDropped(s) {
				log.Error("cluster DNS stopped serving", "err", err)
			}
		})
	}
	<-ctx.Done()
	for _, s := range servers {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.ShutdownContext(sctx)
		cancel()
	}
	wg.Wait()
	l.Close()
}

// accept is miekg/dns's default check without NOTIFY, which a cluster
// DNS server has no use for: it gets NOTIMP like any other opcode.
func accept(dh dns.Header) dns.MsgAcceptAction {
	const qr = 1 << 15
	if dh.Bits&qr != 0 {
		return dns.MsgIgnore
	}
	if opcode := int(dh.Bits>>11) & 0xF; opcode != dns.OpcodeQuery {
		return dns.MsgRejectNotImplemented
	}
	return dns.DefaultMsgAcceptFunc(dh)
}
