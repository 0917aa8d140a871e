package clusterdns

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/miekg/dns"
)

// EDNSSize is the UDP payload size the server advertises and the most it
// sends over UDP: the DNS flag day 2020 value, which fits the minimum IPv6
// MTU without fragments. A longer answer is truncated and the client asks
// again over TCP.
const EDNSSize = 1232

// forwardTimeout bounds the whole forward of one question, below the 5 s
// a C library resolver waits before asking its next nameserver.
const forwardTimeout = 4 * time.Second

// Handler answers DNS messages: the cluster's names from the Resolver,
// the others through the Forwarder.
type Handler struct {
	Resolver  *Resolver
	Forwarder *Forwarder
	Log       *slog.Logger
}

var _ dns.Handler = (*Handler)(nil)

// ServeDNS implements dns.Handler.
func (h *Handler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	start := time.Now()
	proto := "udp"
	if _, ok := w.LocalAddr().(*net.TCPAddr); ok {
		proto = "tcp"
	}
	resp, zone := h.Respond(req, proto)
	if err := w.WriteMsg(resp); err != nil && h.Log != nil {
		h.Log.Debug("writing a DNS answer", "client", w.RemoteAddr().String(), "err", err)
	}
	var qtype uint16
	if len(req.Question) > 0 {
		qtype = req.Question[0].Qtype
	}
	observe(proto, qtype, resp.Rcode, zone, resp.Truncated, time.Since(start))
}

// Respond is the answer to req arriving over proto ("udp" or "tcp"), sized
// for the client, and the zone that answered it.
func (h *Handler) Respond(req *dns.Msg, proto string) (*dns.Msg, string) {
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = true
	var opt *dns.OPT
	for _, rr := range req.Extra {
		if o, ok := rr.(*dns.OPT); ok {
			if opt != nil { // RFC 6891 6.1.1: more than one is FORMERR
				resp.Rcode = dns.RcodeFormatError
				return resp, zoneCluster
			}
			opt = o
		}
	}
	size := dns.MinMsgSize
	if opt != nil {
		if opt.Version() != 0 {
			resp.Rcode = dns.RcodeBadVers
			resp.SetEdns0(EDNSSize, opt.Do())
			return resp, zoneCluster
		}
		size = max(dns.MinMsgSize, min(int(opt.UDPSize()), EDNSSize))
	}
	if proto == "tcp" {
		size = dns.MaxMsgSize
	}
	zone := h.fill(resp, req, proto)
	if opt != nil {
		resp.SetEdns0(EDNSSize, opt.Do())
	}
	resp.Truncate(size)
	return resp, zone
}

// fill puts the answer to req's question into resp (which carries the
// question) and says which zone answered.
func (h *Handler) fill(resp, req *dns.Msg, proto string) string {
	if req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		resp.Rcode = dns.RcodeNotImplemented
		if len(req.Question) != 1 {
			resp.Rcode = dns.RcodeFormatError
		}
		return zoneCluster
	}
	q := req.Question[0]
	switch {
	case q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY:
		resp.Rcode = dns.RcodeRefused
		return zoneCluster
	case q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR:
		// Zone transfers would hand out every Service at once.
		resp.Rcode = dns.RcodeRefused
		return zoneCluster
	}
	res := h.Resolver.Resolve(q.Name, q.Qtype)
	if res.Forward {
		ctx, cancel := context.WithTimeout(context.Background(), forwardTimeout)
		defer cancel()
		up, err := h.Forwarder.Exchange(ctx, req, proto)
		if err != nil {
			resp.Rcode = dns.RcodeServerFailure
			if err == errNoUpstreams {
				resp.Rcode = dns.RcodeRefused
			}
			if h.Log != nil {
				h.Log.Debug("forwarding a DNS question", "name", q.Name, "type", dns.TypeToString[q.Qtype], "err", err)
			}
			return zoneForward
		}
		resp.Rcode = up.Rcode
		resp.Authoritative = false
		resp.Truncated = up.Truncated
		resp.AuthenticatedData = up.AuthenticatedData
		resp.Answer, resp.Ns = up.Answer, up.Ns
		resp.Extra = withoutOPT(up.Extra)
		return zoneForward
	}
	resp.Rcode = res.Rcode
	resp.Authoritative = res.Authoritative
	resp.Answer, resp.Ns, resp.Extra = res.Answer, res.Ns, res.Extra
	if res.Chase != "" {
		h.chase(resp, res.Chase, q.Qtype, proto)
	}
	return zoneCluster
}

// chase adds to resp the records of target (a CNAME's target outside the
// cluster) that upstream has, as a recursive resolver completes a chain.
// When upstream cannot be asked, the CNAME alone is the answer.
func (h *Handler) chase(resp *dns.Msg, target string, qtype uint16, proto string) {
	m := new(dns.Msg)
	m.SetQuestion(target, qtype)
	m.SetEdns0(EDNSSize, false)
	ctx, cancel := context.WithTimeout(context.Background(), forwardTimeout)
	defer cancel()
	up, err := h.Forwarder.Exchange(ctx, m, proto)
	if err == nil && up.Truncated && proto == "udp" {
		up, err = h.Forwarder.Exchange(ctx, m, "tcp")
	}
	if err != nil {
		return
	}
	resp.Answer = append(resp.Answer, up.Answer...)
	if up.Rcode == dns.RcodeNameError {
		resp.Rcode, resp.Ns = up.Rcode, up.Ns
	}
}

func withoutOPT(rrs []dns.RR) []dns.RR {
	out := rrs[:0:0]
	for _, rr := range rrs {
		if _, ok := rr.(*dns.OPT); !ok {
			out = append(out, rr)
		}
	}
	return out
}
