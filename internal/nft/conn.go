package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/socket"
	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
)

// Conn is the kernel's Interface: a NETLINK_NETFILTER socket of one
// network namespace. Its methods may be called from any goroutine.
type Conn struct {
	mu     sync.Mutex
	sock   *socket.Conn
	raw    syscall.RawConn
	seq    uint32
	buf    []byte
	sndbuf int
}

// timeout bounds one exchange with the kernel: a hung netlink socket must
// not hang the agent.
const timeout = 30 * time.Second

// New opens a connection in the network namespace ns refers to (an open
// /run/netns/NAME or /proc/PID/ns/net), or in the caller's for nil. The
// socket stays in that namespace: ns may be closed once New returns.
func New(ns *os.File) (*Conn, error) {
	cfg := &socket.Config{}
	if ns != nil {
		// mdlayher/socket makes the socket on a thread of its own that it
		// moves into the namespace and never gives back.
		cfg.NetNS = int(ns.Fd())
	}
	s, err := socket.Socket(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_NETFILTER, "nftables", cfg)
	if err != nil {
		return nil, fmt.Errorf("netfilter netlink socket: %w", err)
	}
	if err := s.Bind(&unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		s.Close()
		return nil, fmt.Errorf("binding the netfilter netlink socket: %w", err)
	}
	// Errors carry the kernel's explanation, and not a copy of the
	// (possibly large) message that failed.
	_ = s.SetsockoptInt(unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	_ = s.SetsockoptInt(unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	// Dumps of a large table come faster with a large buffer.
	if err := s.SetsockoptInt(unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		_ = s.SetsockoptInt(unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	raw, err := s.SyscallConn()
	if err != nil {
		s.Close()
		return nil, err
	}
	return &Conn{sock: s, raw: raw, buf: make([]byte, 1<<20)}, nil
}

// NewAt is New for the namespace at path: a file under /run/netns or
// /proc; "" is the caller's namespace.
func NewAt(path string) (*Conn, error) {
	if path == "" {
		return New(nil)
	}
	// netns.Open refuses a path that is not a mounted namespace (a file a
	// crash left), which os.Open would hand to setns as a plain file.
	fd, err := netns.Open(path)
	if err != nil {
		return nil, err
	}
	ns := os.NewFile(uintptr(fd), path)
	defer ns.Close()
	c, err := New(ns)
	if err != nil {
		return nil, fmt.Errorf("in network namespace %s: %w", path, err)
	}
	return c, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return c.sock.Close() }

func (c *Conn) send(b []byte) error {
	var serr error
	// Sendto writes into the address it is given: one per call.
	to := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	err := c.raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, to)
		return !errors.Is(serr, unix.EAGAIN)
	})
	return errors.Join(err, serr)
}

// Run sends tx as one batch in one sendmsg. The kernel handles a batch
// while it is being sent: by the time sendmsg returns, its replies (an
// error for each failed message, an ack for the last) are queued, and
// are read without waiting.
func (c *Conn) Run(tx *Transaction) error {
	if tx.err != nil {
		return tx.err
	}
	if len(tx.ops) == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := encodeBatch(tx, c.seq)
	if err != nil {
		return err
	}
	c.seq = b.seq
	// The batch must reach the kernel as one message, and a socket
	// refuses to send more than its send buffer at once; root may raise
	// it past net.core.wmem_max.
	if want := len(b.b) + 64<<10; want > c.sndbuf {
		if err := c.sock.SetsockoptInt(unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, want); err != nil {
			if err := c.sock.SetsockoptInt(unix.SOL_SOCKET, unix.SO_SNDBUF, want); err != nil {
				return fmt.Errorf("raising the netlink send buffer to %d bytes: %w", want, err)
			}
		}
		c.sndbuf = want
	}
	nmsgs := len(b.refs)
	if err := c.send(b.b); err != nil {
		return fmt.Errorf("sending a %d-message nftables batch (%d bytes): %w", nmsgs, len(b.b), err)
	}

	last := b.first + uint32(nmsgs) - 1
	var errs []error
	acked := false
	var rerr error
	cerr := c.raw.Control(func(fd uintptr) {
		for {
			n, _, err := unix.Recvfrom(int(fd), c.buf, unix.MSG_DONTWAIT)
			if errors.Is(err, unix.EAGAIN) {
				return
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				rerr = fmt.Errorf("reading the batch's outcome: %w", err)
				return
			}
			replies, err := parseMessages(c.buf[:n])
			if err != nil {
				rerr = err
				return
			}
			for _, r := range replies {
				if r.Header.Type != netlink.Error {
					continue
				}
				errno, msg := parseError(r)
				seq := r.Header.Sequence
				if errno == 0 {
					acked = acked || seq == last
					continue
				}
				desc := "committing the batch"
				if seq >= b.first && seq <= last {
					desc = b.describe(tx, seq-b.first)
				}
				e := fmt.Errorf("%s: %w", desc, unix.Errno(errno))
				if msg != "" {
					e = fmt.Errorf("%s: %w (%s)", desc, unix.Errno(errno), msg)
				}
				errs = append(errs, e)
			}
		}
	})
	if err := errors.Join(cerr, rerr); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		if len(errs) > 5 {
			errs = append(errs[:5], fmt.Errorf("and %d more errors", len(errs)-5))
		}
		return fmt.Errorf("nftables batch of %d messages rejected: %w", nmsgs, errors.Join(errs...))
	}
	if !acked {
		return fmt.Errorf("nftables batch of %d messages: no acknowledgement from the kernel", nmsgs)
	}
	return nil
}

// describe says what the i-th operation message of a batch does.
func (b *batch) describe(tx *Transaction, i uint32) string {
	r := b.refs[i]
	o := &tx.ops[r.op]
	if o.kind == opAddElements || o.kind == opDeleteElements {
		verb := "adding"
		if o.kind == opDeleteElements {
			verb = "deleting"
		}
		return fmt.Sprintf("%s elements %d to %d of %d of set %s of table %s", verb, r.from+1, r.to, len(o.elems), o.name, o.table)
	}
	return o.describe()
}

func parseMessages(b []byte) ([]netlink.Message, error) {
	var out []netlink.Message
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < nlmsgHdrLen || l > len(b) {
			return nil, fmt.Errorf("malformed netlink message of length %d in %d bytes", l, len(b))
		}
		var m netlink.Message
		m.Header.Length = uint32(l)
		m.Header.Type = netlink.HeaderType(binary.NativeEndian.Uint16(b[4:6]))
		m.Header.Flags = netlink.HeaderFlags(binary.NativeEndian.Uint16(b[6:8]))
		m.Header.Sequence = binary.NativeEndian.Uint32(b[8:12])
		m.Header.PID = binary.NativeEndian.Uint32(b[12:16])
		m.Data = b[nlmsgHdrLen:l]
		out = append(out, m)
		b = b[min(nlAlign(l), len(b)):]
	}
	return out, nil
}

// parseError reads an NLMSG_ERROR: the (positive) errno, and the
// kernel's message if it sent one.
func parseError(m netlink.Message) (int, string) {
	if len(m.Data) < 4 {
		return int(unix.EINVAL), "short error message"
	}
	errno := -int32(binary.NativeEndian.Uint32(m.Data[:4]))
	if m.Header.Flags&unix.NLM_F_ACK_TLVS == 0 {
		return int(errno), ""
	}
	// The error is followed by the failed message's header (its payload
	// is capped off), then the TLVs.
	off := 4 + nlmsgHdrLen
	if m.Header.Flags&unix.NLM_F_CAPPED == 0 && len(m.Data) >= off {
		off = 4 + int(binary.NativeEndian.Uint32(m.Data[4:8]))
	}
	if off > len(m.Data) {
		return int(errno), ""
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[off:])
	if err != nil {
		return int(errno), ""
	}
	for ad.Next() {
		if ad.Type() == unix.NLMSGERR_ATTR_MSG {
			return int(errno), strings.TrimRight(ad.String(), "\x00")
		}
	}
	return int(errno), ""
}

// dump runs one dump request and returns its messages. A dump the kernel
// interrupted (the ruleset changed under it) is run again.
func (c *Conn) dump(typ uint16, family Family, attrs func(*encoder)) ([]netlink.Message, error) {
	for attempt := 0; ; attempt++ {
		msgs, intr, err := c.request(typ, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, family, attrs)
		if err != nil || !intr {
			return msgs, err
		}
		if attempt == 5 {
			return nil, fmt.Errorf("dump interrupted by changes %d times", attempt+1)
		}
	}
}

// get runs one request for one object; a missing object is unix.ENOENT.
func (c *Conn) get(typ uint16, family Family, attrs func(*encoder)) ([]netlink.Message, error) {
	msgs, _, err := c.request(typ, unix.NLM_F_REQUEST|unix.NLM_F_ACK, family, attrs)
	return msgs, err
}

func (c *Conn) request(typ uint16, flags uint16, family Family, attrs func(*encoder)) ([]netlink.Message, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	seq := c.seq
	var e encoder
	e.begin(nftMsg|typ, flags, seq, uint8(family.TableFamily()), 0)
	attrs(&e)
	e.end()
	if err := c.send(e.b); err != nil {
		return nil, false, fmt.Errorf("netlink request: %w", err)
	}
	if err := c.sock.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, false, err
	}
	var out []netlink.Message
	intr := false
	for {
		var n int
		var rerr error
		err := c.raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), c.buf, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if errors.Is(rerr, unix.EINTR) {
			continue
		}
		if err := errors.Join(err, rerr); err != nil {
			return nil, false, fmt.Errorf("netlink reply: %w", err)
		}
		msgs, err := parseMessages(c.buf[:n])
		if err != nil {
			return nil, false, err
		}
		for _, r := range msgs {
			if r.Header.Sequence != seq {
				continue // a late reply to an earlier request
			}
			if r.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				intr = true
			}
			switch r.Header.Type {
			case netlink.Done:
				return out, intr, nil
			case netlink.Error:
				errno, msg := parseError(r)
				if errno == 0 {
					return out, intr, nil
				}
				if msg != "" {
					return nil, false, fmt.Errorf("%w (%s)", unix.Errno(errno), msg)
				}
				return nil, false, unix.Errno(errno)
			default:
				// Data is a view of c.buf, which the next read reuses.
				r.Data = append([]byte(nil), r.Data...)
				out = append(out, r)
			}
		}
	}
}
