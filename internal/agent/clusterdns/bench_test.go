package clusterdns

import (
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// benchSource holds the benchmark cluster: 10,000 dual-stack
// Services and 1,000 headless Services with 10 endpoints of each family.
func benchSource(b *testing.B) *Index {
	src := newSource()
	for i := range 10000 {
		src.add(b, withPorts(service(fmt.Sprintf("ns%d", i%100), fmt.Sprintf("svc%d", i),
			fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), fmt.Sprintf("fd00:10:96::%x", i+1)), port("http", corev1.ProtocolTCP, 80)))
	}
	for i := range 1000 {
		svc := service(fmt.Sprintf("ns%d", i%100), fmt.Sprintf("hl%d", i))
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
		var v4, v6 []ep
		for j := range 10 {
			v4 = append(v4, ep{addr: fmt.Sprintf("10.%d.%d.%d", 128+i/250, i%250, j+1)})
			v6 = append(v6, ep{addr: fmt.Sprintf("fd00:10:244:%x::%x", i, j+1)})
		}
		src.add(b, svc,
			slice(svc.Namespace, svc.Name, svc.Name+"-v4", discoveryv1.AddressTypeIPv4, nil, v4...),
			slice(svc.Namespace, svc.Name, svc.Name+"-v6", discoveryv1.AddressTypeIPv6, nil, v6...))
	}
	return src
}

// benchQuestions mix A, AAAA and PTR questions of Services and headless
// Services.
func benchQuestions(n int) []dns.Question {
	var qs []dns.Question
	for i := range n {
		k := i * 7919 % 10000
		switch i % 4 {
		case 0:
			qs = append(qs, dns.Question{Name: fmt.Sprintf("svc%d.ns%d.svc.cluster.local.", k, k%100), Qtype: dns.TypeA, Qclass: dns.ClassINET})
		case 1:
			qs = append(qs, dns.Question{Name: fmt.Sprintf("svc%d.ns%d.svc.cluster.local.", k, k%100), Qtype: dns.TypeAAAA, Qclass: dns.ClassINET})
		case 2:
			rev, _ := dns.ReverseAddr(fmt.Sprintf("10.96.%d.%d", k/250, k%250+1))
			qs = append(qs, dns.Question{Name: rev, Qtype: dns.TypePTR, Qclass: dns.ClassINET})
		case 3:
			h := k % 1000
			qs = append(qs, dns.Question{Name: fmt.Sprintf("hl%d.ns%d.svc.cluster.local.", h, h%100), Qtype: dns.TypeA, Qclass: dns.ClassINET})
		}
	}
	return qs
}

// BenchmarkResolve is the lookup alone: name to records, no wire.
func BenchmarkResolve(b *testing.B) {
	r := newTestResolver(b, benchSource(b))
	qs := benchQuestions(4096)
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		q := qs[i%len(qs)]
		if res := r.Resolve(q.Name, q.Qtype); len(res.Answer) == 0 {
			b.Fatalf("%s %s: no answer", q.Name, dns.TypeToString[q.Qtype])
		}
		i++
	}
}

// BenchmarkHandler is a question answered in wire format, as the server
// does for each packet, without the socket.
func BenchmarkHandler(b *testing.B) {
	h := &Handler{Resolver: newTestResolver(b, benchSource(b))}
	var wires [][]byte
	for _, q := range benchQuestions(4096) {
		m := new(dns.Msg)
		m.Question = []dns.Question{q}
		m.RecursionDesired = true
		w, _ := m.Pack()
		wires = append(wires, w)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime()
	i := 0
	for b.Loop() {
		req := new(dns.Msg)
		if err := req.Unpack(wires[i%len(wires)]); err != nil {
			b.Fatal(err)
		}
		resp, _ := h.Respond(req, "udp")
		if _, err := resp.Pack(); err != nil || len(resp.Answer) == 0 {
			b.Fatalf("%v: %v", resp, err)
		}
		i++
	}
	reportCPU(b, cpu)
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time per query since start and the queries
// one core answers per second at that cost: on a machine whose other
// work slows the wall clock, CPU time is the steadier measure.
func reportCPU(b *testing.B, start time.Duration) {
	per := float64(cpuTime()-start) / float64(b.N)
	b.ReportMetric(per, "cpu-ns/query")
	b.ReportMetric(1e9/per, "queries/s/core")
}

// BenchmarkServeUDP is queries per second over loopback UDP, from as many
// clients as GOMAXPROCS, each waiting for its answer before the next
// question (what a node's pods do).
func BenchmarkServeUDP(b *testing.B) {
	addr := serve(b, benchSource(b))
	qs := benchQuestions(4096)
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		conn, err := net.Dial("udp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		co := &dns.Conn{Conn: conn}
		c := &dns.Client{Timeout: 2 * time.Second}
		i := 0
		for pb.Next() {
			m := new(dns.Msg)
			m.Question = []dns.Question{qs[i%len(qs)]}
			m.Id = dns.Id()
			resp, _, err := c.ExchangeWithConn(m, co)
			if err != nil || len(resp.Answer) == 0 {
				b.Errorf("%v: %v", m.Question[0], err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "queries/s")
	// Client and server share the process: this is the cost of both.
	reportCPU(b, cpu)
}
