package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
)

// nlConn is a NETLINK_NETFILTER socket of Duet's own. google/nftables
// builds the messages, but its Flush asks the kernel for an ack (and, for
// rules, an echo) of every message and reads them one at a time: with a
// hundred thousand messages in a batch, those overflow the receive buffer
// (ENOBUFS, after the kernel has committed) and cost two syscalls each.
// Here a batch goes out in one sendmsg, with an ack asked for its last
// message only; errors come back either way, synchronously, before
// sendmsg returns.
type nlConn struct {
	fd     int
	seq    uint32
	buf    []byte
	sndbuf int
}

// openNetlink opens the socket in the network namespace at nsPath ("" for
// the caller's). A socket stays in the namespace it was made in, so only
// its creation needs the thread to be there.
func openNetlink(nsPath string) (*nlConn, error) {
	var fd int
	err := inNamespace(nsPath, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netfilter netlink socket in %q: %w", nsPath, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding netlink socket: %w", err)
	}
	// Errors carry the kernel's explanation, and not a copy of the
	// (possibly large) message that failed.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	// Dumps of a large table come faster with a large buffer.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	tv := unix.Timeval{Sec: 30}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &nlConn{fd: fd, buf: make([]byte, 1<<20)}, nil
}

func (c *nlConn) close() error { return unix.Close(c.fd) }

// inNamespace runs fn on a thread in the namespace at path.
func inNamespace(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return netns.Do(path, fn)
}

const nftMsg = unix.NFNL_SUBSYS_NFTABLES << 8

// nfgen is the nfgenmsg header every nftables message starts with.
func nfgen(family uint8, resID uint16) []byte {
	return []byte{family, unix.NFNETLINK_V0, byte(resID >> 8), byte(resID)}
}

// sendBatch commits msgs (without batch delimiters) as one transaction.
// what[i] says what msgs[i] does, for errors.
func (c *nlConn) sendBatch(msgs []netlink.Message, what []string) error {
	if len(msgs) == 0 {
		return nil
	}
	first := c.seq + 1
	all := make([]netlink.Message, 0, len(msgs)+2)
	all = append(all, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request},
		Data:   nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES),
	})
	for _, m := range msgs {
		m.Header.Flags &^= netlink.Acknowledge | netlink.Echo
		all = append(all, m)
	}
	all[len(all)-1].Header.Flags |= netlink.Acknowledge
	all = append(all, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request},
		Data:   nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES),
	})
	size := 0
	for i := range all {
		c.seq++
		all[i].Header.Sequence = c.seq
		all[i].Header.PID = 0
		all[i].Header.Length = uint32(16 + len(all[i].Data))
		size += nlAlign(int(all[i].Header.Length))
	}
	out := make([]byte, 0, size)
	for _, m := range all {
		b, err := m.MarshalBinary()
		if err != nil {
			return fmt.Errorf("marshalling netlink message: %w", err)
		}
		out = append(out, b...)
	}
	// The whole batch must reach the kernel as one message, and a socket
	// refuses to send more than its send buffer at once; root may raise it.
	if want := len(out) + 64<<10; want > c.sndbuf {
		if err := unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, want); err != nil {
			if err := unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, want); err != nil {
				return fmt.Errorf("raising the netlink send buffer to %d bytes: %w", want, err)
			}
		}
		c.sndbuf = want
	}
	if err := unix.Sendto(c.fd, out, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sending a %d-message nftables batch (%d bytes): %w", len(msgs), len(out), err)
	}

	last := c.seq - 1 // the last message before BATCH_END
	var errs []error
	acked := false
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EWOULDBLOCK) {
			break
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("reading the batch's outcome: %w", err))
			break
		}
		replies, err := netlinkParse(c.buf[:n])
		if err != nil {
			return err
		}
		for _, r := range replies {
			if r.Header.Type != netlink.Error {
				continue
			}
			errno, msg := parseNlErr(r)
			seq := r.Header.Sequence
			if errno == 0 {
				if seq == last {
					acked = true
				}
				continue
			}
			desc := "committing the batch"
			if seq > first && seq <= last {
				desc = what[seq-first-1]
			}
			e := fmt.Errorf("%s: %w", desc, unix.Errno(errno))
			if msg != "" {
				e = fmt.Errorf("%s: %w (%s)", desc, unix.Errno(errno), msg)
			}
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		if len(errs) > 5 {
			errs = append(errs[:5], fmt.Errorf("and %d more errors", len(errs)-5))
		}
		return fmt.Errorf("nftables batch of %d messages rejected: %w", len(msgs), errors.Join(errs...))
	}
	if !acked {
		return fmt.Errorf("nftables batch of %d messages: no acknowledgement from the kernel", len(msgs))
	}
	return nil
}

func nlAlign(n int) int { return (n + 3) &^ 3 }

func netlinkParse(b []byte) ([]netlink.Message, error) {
	var out []netlink.Message
	for len(b) >= 16 {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < 16 || l > len(b) {
			return nil, fmt.Errorf("malformed netlink message of length %d in %d bytes", l, len(b))
		}
		var m netlink.Message
		m.Header.Length = uint32(l)
		m.Header.Type = netlink.HeaderType(binary.NativeEndian.Uint16(b[4:6]))
		m.Header.Flags = netlink.HeaderFlags(binary.NativeEndian.Uint16(b[6:8]))
		m.Header.Sequence = binary.NativeEndian.Uint32(b[8:12])
		m.Header.PID = binary.NativeEndian.Uint32(b[12:16])
		m.Data = b[16:l]
		out = append(out, m)
		b = b[min(nlAlign(l), len(b)):]
	}
	return out, nil
}

// parseNlErr reads an NLMSG_ERROR: the (positive) errno, and the
// kernel's message if it sent one.
func parseNlErr(m netlink.Message) (int, string) {
	if len(m.Data) < 4 {
		return int(unix.EINVAL), "short error message"
	}
	errno := -int32(binary.NativeEndian.Uint32(m.Data[:4]))
	if m.Header.Flags&unix.NLM_F_ACK_TLVS == 0 {
		return int(errno), ""
	}
	// The error is followed by the failed message's header (its payload
	// is capped off), then the TLVs.
	off := 4 + 16
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

// dump runs one dump request and returns its messages. A dump the
// kernel interrupted (the ruleset changed under it) is run again.
func (c *nlConn) dump(typ uint16, family uint8, attrs []netlink.Attribute) ([]netlink.Message, error) {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		msgs, intr, err := c.request(typ, netlink.Request|netlink.Dump, family, data)
		if err != nil || !intr {
			return msgs, err
		}
		if attempt == 5 {
			return nil, fmt.Errorf("dump interrupted by changes %d times", attempt+1)
		}
	}
}

// get runs one non-dump request; a missing object is unix.ENOENT.
func (c *nlConn) get(typ uint16, family uint8, attrs []netlink.Attribute) ([]netlink.Message, error) {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	msgs, _, err := c.request(typ, netlink.Request|netlink.Acknowledge, family, data)
	return msgs, err
}

func (c *nlConn) request(typ uint16, flags netlink.HeaderFlags, family uint8, data []byte) ([]netlink.Message, bool, error) {
	c.seq++
	seq := c.seq
	m := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(nftMsg | typ), Flags: flags, Sequence: seq},
		Data:   append(nfgen(family, 0), data...),
	}
	m.Header.Length = uint32(16 + len(m.Data))
	b, err := m.MarshalBinary()
	if err != nil {
		return nil, false, err
	}
	if err := unix.Sendto(c.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, false, fmt.Errorf("netlink request: %w", err)
	}
	var out []netlink.Message
	intr := false
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("netlink reply: %w", err)
		}
		msgs, err := netlinkParse(c.buf[:n])
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
				errno, msg := parseNlErr(r)
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
				if flags&netlink.Dump == 0 && r.Header.Flags&netlink.Multi == 0 && flags&netlink.Acknowledge == 0 {
					return out, intr, nil
				}
			}
		}
	}
}
