package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// question is one query of the benchmark's mix, packed with ID 0.
type question struct {
	name  string
	qtype uint16
	wire  []byte
}

func newQuestion(name string, qtype uint16) question {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	wire, err := m.Pack()
	if err != nil {
		// Names come from the benchmark's own objects.
		panic(fmt.Sprintf("packing %s: %v", name, err))
	}
	return question{name: name, qtype: qtype, wire: wire}
}

// mix is n questions, a third each A, AAAA and PTR, of Services picked at
// random (seeded: every run asks the same) among all of pop's: the names
// of Services and headless Services, and the reverse names of cluster IPs
// and endpoint addresses.
func mix(pop *population, n int) []question {
	rng := rand.New(rand.NewPCG(1, 2))
	all := append(slices.Clip(pop.services), pop.headless...)
	qs := make([]question, 0, n)
	for i := range n {
		s := all[rng.IntN(len(all))]
		switch i % 3 {
		case 0:
			qs = append(qs, newQuestion(s.fqdn(), dns.TypeA))
		case 1:
			qs = append(qs, newQuestion(s.fqdn(), dns.TypeAAAA))
		case 2:
			addrs := s.v4
			if rng.IntN(2) == 0 {
				addrs = s.v6
			}
			rev, err := dns.ReverseAddr(addrs[rng.IntN(len(addrs))].String())
			if err != nil {
				panic(err)
			}
			qs = append(qs, newQuestion(rev, dns.TypePTR))
		}
	}
	return qs
}

// header fields of a DNS message that the load generators check.
func msgID(b []byte) uint16    { return binary.BigEndian.Uint16(b[0:2]) }
func rcode(b []byte) int       { return int(b[3] & 0xf) }
func ancount(b []byte) int     { return int(binary.BigEndian.Uint16(b[6:8])) }
func isResponse(b []byte) bool { return len(b) >= 12 && b[2]&0x80 != 0 }

// answered reports whether response b is a positive answer (NOERROR with
// records).
func answered(b []byte) bool { return rcode(b) == dns.RcodeSuccess && ancount(b) > 0 }

// satResult is what a closed-loop run got.
type satResult struct {
	ok, failed, lost int
	elapsed          time.Duration
}

func (r satResult) qps() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ok+r.failed) / r.elapsed.Seconds()
}

// saturate asks qs from workers clients, each sending its next question
// as soon as the last is answered (or after a second without answer),
// for dur: the server's throughput once it is the bottleneck.
func saturate(addr string, qs []question, workers int, dur time.Duration) (satResult, error) {
	var ok, failed, lost atomic.Int64
	deadline := time.Now().Add(dur)
	start := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			conn, err := net.Dial("udp", addr)
			if err != nil {
				errc <- err
				return
			}
			defer conn.Close()
			out := make([]byte, 512)
			in := make([]byte, 4096)
			id := uint16(w << 10)
			for i := w; time.Now().Before(deadline); i++ {
				q := qs[i%len(qs)]
				id++
				n := copy(out, q.wire)
				binary.BigEndian.PutUint16(out, id)
				if _, err := conn.Write(out[:n]); err != nil {
					errc <- err
					return
				}
				_ = conn.SetReadDeadline(time.Now().Add(time.Second))
				for {
					m, err := conn.Read(in)
					if err != nil {
						var ne net.Error
						if errors.As(err, &ne) && ne.Timeout() {
							lost.Add(1)
							break
						}
						errc <- err
						return
					}
					if m < 12 || msgID(in) != id || !isResponse(in) {
						continue // a late answer to an earlier question
					}
					if answered(in[:m]) {
						ok.Add(1)
					} else {
						failed.Add(1)
					}
					break
				}
			}
		})
	}
	wg.Wait()
	res := satResult{ok: int(ok.Load()), failed: int(failed.Load()), lost: int(lost.Load()), elapsed: time.Since(start)}
	select {
	case err := <-errc:
		return res, err
	default:
		return res, nil
	}
}

// rateResult is what an open-loop run at a fixed rate got.
type rateResult struct {
	sent, failed, lost int
	// latencies of the answered questions, sorted.
	latencies []time.Duration
	// behind is how far the sender fell behind its schedule at worst: a
	// large value means the machine, not the server, held questions back.
	behind time.Duration
}

// merge pools the questions of two runs.
func (r rateResult) merge(o rateResult) rateResult {
	r.sent += o.sent
	r.failed += o.failed
	r.lost += o.lost
	r.latencies = append(slices.Clip(r.latencies), o.latencies...)
	slices.Sort(r.latencies)
	r.behind = max(r.behind, o.behind)
	return r
}

// percentile is the latency that p percent of the questions sent were
// answered within; ok is false when it falls among the questions not
// answered positively, which count as slower than any answer.
func (r rateResult) percentile(p float64) (d time.Duration, ok bool) {
	if r.sent == 0 {
		return 0, false
	}
	i := int(p / 100 * float64(r.sent-1))
	if i >= len(r.latencies) {
		return 0, false
	}
	return r.latencies[i], true
}

// fixedRate sends qs at rate questions per second for dur, spread over
// sockets, whatever the answers do (an open loop, as clients in a cluster
// behave), and measures each question's time to its answer from the
// moment it was sent.
func fixedRate(addr string, qs []question, rate int, dur time.Duration, sockets int) (rateResult, error) {
	total := int(float64(rate) * dur.Seconds())
	if total/sockets >= 1<<16 {
		return rateResult{}, fmt.Errorf("%d questions over %d sockets would reuse IDs", total, sockets)
	}
	conns := make([]*net.UDPConn, sockets)
	for i := range conns {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return rateResult{}, err
		}
		conns[i] = c.(*net.UDPConn)
		defer c.Close()
	}
	sent := make([]int64, total) // unix nanoseconds; 0: not sent
	got := make([]int64, total)  // latency in ns; -1: failed; 0: lost
	var wg sync.WaitGroup
	end := time.Now().Add(dur + 2*time.Second)
	for s, c := range conns {
		_ = c.SetReadDeadline(end)
		wg.Go(func() {
			in := make([]byte, 4096)
			for {
				m, err := c.Read(in)
				if err != nil {
					return // the deadline: the run is over
				}
				now := time.Now().UnixNano()
				if m < 12 || !isResponse(in) {
					continue
				}
				i := int(msgID(in))*sockets + s
				if i >= total {
					continue
				}
				at := atomic.LoadInt64(&sent[i])
				if at == 0 || got[i] != 0 {
					continue
				}
				if answered(in[:m]) {
					got[i] = max(1, now-at)
				} else {
					got[i] = -1
				}
			}
		})
	}
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	out := make([]byte, 512)
	var behind time.Duration
	for next := 0; next < total; {
		due := min(total, int(time.Since(start)/interval)+1)
		if lag := time.Since(start.Add(time.Duration(next) * interval)); lag > behind {
			behind = lag
		}
		for ; next < due; next++ {
			q := qs[next%len(qs)]
			n := copy(out, q.wire)
			binary.BigEndian.PutUint16(out, uint16(next/sockets))
			atomic.StoreInt64(&sent[next], time.Now().UnixNano())
			if _, err := conns[next%sockets].Write(out[:n]); err != nil {
				return rateResult{}, err
			}
		}
		time.Sleep(time.Until(start.Add(time.Duration(next) * interval)))
	}
	// Answers still on the way get two seconds; readers stop at end.
	wg.Wait()
	res := rateResult{sent: total, behind: behind}
	for _, g := range got {
		switch {
		case g > 0:
			res.latencies = append(res.latencies, time.Duration(g))
		case g < 0:
			res.failed++
		default:
			res.lost++
		}
	}
	slices.Sort(res.latencies)
	return res, nil
}

// exchange asks addr one question over UDP, retrying over TCP when the
// answer is truncated.
func exchange(addr, name string, qtype uint16, timeout time.Duration) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, false)
	c := &dns.Client{Timeout: timeout}
	r, _, err := c.Exchange(m, addr)
	if err == nil && r.Truncated {
		c.Net = "tcp"
		r, _, err = c.Exchange(m, addr)
	}
	return r, err
}

// answerKey is an answer's rcode and its records' data, sorted: what two
// servers answering the same question must agree on.
func answerKey(r *dns.Msg) string {
	var rrs []string
	for _, rr := range r.Answer {
		h := rr.Header()
		rrs = append(rrs, fmt.Sprintf("%s %s %s", h.Name, dns.TypeToString[h.Rrtype], rr.String()[len(h.String()):]))
	}
	slices.Sort(rrs)
	return fmt.Sprintf("%s %q", dns.RcodeToString[r.Rcode], rrs)
}

// compare asks both servers each question and returns how many answers
// differ, describing the first few on stderr.
func compare(a, b *dnsServer, qs []question) (int, error) {
	diff := 0
	for _, q := range qs {
		ra, err := exchange(a.addr, q.name, q.qtype, 2*time.Second)
		if err != nil {
			return diff, fmt.Errorf("%s: %s %s: %w", a.name, q.name, dns.TypeToString[q.qtype], err)
		}
		rb, err := exchange(b.addr, q.name, q.qtype, 2*time.Second)
		if err != nil {
			return diff, fmt.Errorf("%s: %s %s: %w", b.name, q.name, dns.TypeToString[q.qtype], err)
		}
		if ka, kb := answerKey(ra), answerKey(rb); ka != kb {
			if diff < 5 {
				fmt.Fprintf(os.Stderr, "dnsbench: %s %s:\n  %s: %s\n  %s: %s\n", q.name, dns.TypeToString[q.qtype], a.name, ka, b.name, kb)
			}
			diff++
		}
	}
	return diff, nil
}

// firstAnswer asks addr for name's A record every interval until a
// positive answer comes, and returns when it came, or the zero time
// when stop closes first.
func firstAnswer(addr, name string, interval time.Duration, stop <-chan struct{}) (time.Time, error) {
	conn, err := net.Dial("udp", addr)
	if err != nil {
		return time.Time{}, err
	}
	defer conn.Close()
	q := newQuestion(name, dns.TypeA)
	out := slices.Clone(q.wire)
	in := make([]byte, 4096)
	for id := uint16(1); ; id++ {
		select {
		case <-stop:
			return time.Time{}, nil
		default:
		}
		binary.BigEndian.PutUint16(out, id)
		if _, err := conn.Write(out); err != nil {
			return time.Time{}, err
		}
		_ = conn.SetReadDeadline(time.Now().Add(interval))
		for {
			m, err := conn.Read(in)
			if err != nil {
				break // no answer within the interval: ask again
			}
			if m >= 12 && msgID(in) == id && isResponse(in) {
				if answered(in[:m]) {
					return time.Now(), nil
				}
				// Not yet: wait out the interval before asking again.
				time.Sleep(interval)
				break
			}
		}
	}
}
