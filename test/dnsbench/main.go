// Command dnsbench compares Duet's cluster DNS with CoreDNS's kubernetes
// plugin side by side, both fed by the same `duet server` on loopback and
// both holding the same cluster: 10,000 dual-stack Services and 1,000
// headless Services with 10 ready endpoints of each family.
//
//	make dnsbench                      builds bin/duet and bin/coredns, then runs this
//	go run ./test/dnsbench -h          the knobs
//
// It measures, for each server pinned to one CPU with GOMAXPROCS=1:
// queries per second at saturation (and per CPU-second the server used,
// which a busy machine disturbs less), p50/p99 latency at a fixed rate of
// mixed A/AAAA/PTR questions, resident memory, and the time from creating
// a Service to each server answering its name. The load generator runs
// on another CPU. Everything it starts (the API server, both DNS servers)
// runs under a temporary directory and is stopped and removed at the end.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

type options struct {
	duet, coredns                  string
	services, headless, endpoints  int
	serverCPU, clientCPU           int
	satDuration, rateDuration      time.Duration
	rate, workers, rounds, creates int
	poll                           time.Duration
	separate, aa                   bool
	corednsCache                   bool
	keep, profile                  bool
}

func main() {
	var o options
	var serveDNS bool
	var kubeconfig, profileDir string
	var port int
	flag.StringVar(&o.duet, "duet", "bin/duet", "the duet binary whose `duet server` both DNS servers watch")
	flag.StringVar(&o.coredns, "coredns", "bin/coredns", "the CoreDNS binary (make coredns)")
	flag.IntVar(&o.services, "services", 10000, "dual-stack Services with cluster IPs")
	flag.IntVar(&o.headless, "headless", 1000, "headless dual-stack Services")
	flag.IntVar(&o.endpoints, "endpoints", 10, "ready endpoints of each family per headless Service (at most 10)")
	flag.IntVar(&o.serverCPU, "server-cpu", 1, "the CPU each DNS server is pinned to")
	flag.IntVar(&o.clientCPU, "client-cpu", 0, "the CPU the load generator is pinned to (-1: not pinned)")
	flag.DurationVar(&o.satDuration, "saturation-time", 5*time.Second, "length of each saturation run")
	flag.IntVar(&o.workers, "workers", 32, "clients of the saturation runs, each with one question outstanding")
	flag.IntVar(&o.rounds, "rounds", 3, "saturation runs per server, taken in turns; the best counts")
	flag.IntVar(&o.rate, "rate", 5000, "questions per second of the latency runs")
	flag.DurationVar(&o.rateDuration, "rate-time", 10*time.Second, "length of each latency run")
	flag.IntVar(&o.creates, "creates", 50, "Services created to time create-to-resolvable")
	flag.DurationVar(&o.poll, "poll", 200*time.Microsecond, "how often each server is asked for a new Service's name")
	flag.BoolVar(&o.separate, "separate", true, "create-to-resolvable with each server on a CPU of its own, swapped every other Service (else both on -server-cpu)")
	flag.BoolVar(&o.aa, "aa", false, "compare Duet's DNS with a second one in CoreDNS's place: the differences the bench shows between equals")
	flag.BoolVar(&o.corednsCache, "coredns-cache", false, "give CoreDNS the cache plugin (cache 30), as kubeadm's Corefile has")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (logs) after the run")
	flag.BoolVar(&o.profile, "profile", false, "profile Duet's DNS (CPU and heap, in the kept temporary directory); implies -keep")
	flag.BoolVar(&serveDNS, "serve-duet-dns", false, "internal: serve Duet's cluster DNS (the benchmark starts itself so)")
	flag.StringVar(&kubeconfig, "kubeconfig", "", "internal: with -serve-duet-dns")
	flag.IntVar(&port, "port", 0, "internal: with -serve-duet-dns")
	flag.StringVar(&profileDir, "profile-dir", "", "internal: with -serve-duet-dns")
	flag.Parse()
	if serveDNS {
		if err := serveDuetDNS(kubeconfig, port, profileDir); err != nil {
			fmt.Fprintln(os.Stderr, "dnsbench: duet dns:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "dnsbench:", err)
		os.Exit(1)
	}
}

// report is one server's numbers.
type report struct {
	sat                 satResult
	satCPU              time.Duration
	rate                rateResult
	rssSynced, rssAfter int64
	toResolve           []time.Duration
}

func run(ctx context.Context, o options) (err error) {
	for _, p := range []string{o.duet, o.coredns} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%w (make dnsbench builds bin/duet and bin/coredns)", err)
		}
	}
	if o.clientCPU >= 0 {
		if err := pinSelf(o.clientCPU); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp("", "dnsbench-")
	if err != nil {
		return err
	}
	var procs []*child
	defer func() {
		// Stop in reverse order: the DNS servers before the API server.
		for _, p := range slices.Backward(procs) {
			p.stop()
		}
		if o.keep || o.profile {
			fmt.Fprintln(os.Stderr, "dnsbench: logs kept in", dir)
		} else if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	fmt.Printf("dnsbench: load average %s at the start; server CPU %d, load generator CPU %d\n", loadAverage(), o.serverCPU, o.clientCPU)

	srv, kubeconfig, err := startServer(ctx, o.duet, dir)
	if err != nil {
		return err
	}
	procs = append(procs, srv)
	client, err := newClient(kubeconfig)
	if err != nil {
		return err
	}
	t0 := time.Now()
	pop, err := populate(ctx, client, o.services, o.headless, o.endpoints, 16)
	if err != nil {
		return err
	}
	fmt.Printf("dnsbench: created %d Services, %d headless Services with %d endpoints per family in %v\n",
		o.services, o.headless, o.endpoints, time.Since(t0).Round(time.Second))

	var cdns *dnsServer
	if o.aa {
		// The bench's own noise: Duet's DNS in CoreDNS's place too.
		aaDir := filepath.Join(dir, "aa")
		if err := os.Mkdir(aaDir, 0o755); err != nil {
			return err
		}
		cdns, err = startDuetDNS(aaDir, kubeconfig, o.serverCPU, false)
		if cdns != nil {
			cdns.name = "Duet-2"
		}
	} else {
		cdns, err = startCoreDNS(o.coredns, dir, kubeconfig, o.serverCPU, o.corednsCache)
	}
	if err != nil {
		return err
	}
	procs = append(procs, cdns.proc)
	ddns, err := startDuetDNS(dir, kubeconfig, o.serverCPU, o.profile)
	if err != nil {
		return err
	}
	procs = append(procs, ddns.proc)
	servers := []*dnsServer{cdns, ddns}
	reports := map[*dnsServer]*report{cdns: {}, ddns: {}}

	// Both hold the whole cluster once they answer its last objects.
	var last []question
	if len(pop.services) > 0 {
		last = append(last, newQuestion(pop.services[len(pop.services)-1].fqdn(), dns.TypeA))
	}
	if len(pop.headless) > 0 {
		last = append(last, newQuestion(pop.headless[len(pop.headless)-1].fqdn(), dns.TypeAAAA))
	}
	for _, s := range servers {
		if err := waitSynced(ctx, s, last, o.endpoints); err != nil {
			return err
		}
	}
	qs := mix(pop, 30000)
	diff, err := compare(cdns, ddns, qs[:600])
	if err != nil {
		return err
	}
	fmt.Printf("dnsbench: both servers hold the cluster; %d of 600 sample answers differ\n", diff)
	for _, s := range servers {
		if reports[s].rssSynced, err = residentBytes(s.proc.pid()); err != nil {
			return err
		}
	}

	// Saturation, in turns so that a change of the machine's load falls
	// on both.
	for round := range o.rounds {
		order := servers
		if round%2 == 1 {
			order = []*dnsServer{ddns, cdns}
		}
		for _, s := range order {
			if err := ctx.Err(); err != nil {
				return err
			}
			cpu0, err := processCPU(s.proc.pid())
			if err != nil {
				return err
			}
			res, err := saturate(s.addr, qs, o.workers, o.satDuration)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			cpu1, err := processCPU(s.proc.pid())
			if err != nil {
				return err
			}
			fmt.Printf("dnsbench: saturation round %d %-7s %8.0f queries/s, %8.0f per CPU-second (%d answered, %d not positive, %d lost)\n",
				round+1, s.name, res.qps(), float64(res.ok+res.failed)/(cpu1-cpu0).Seconds(), res.ok, res.failed, res.lost)
			r := reports[s]
			if res.qps() > r.sat.qps() {
				r.sat, r.satCPU = res, cpu1-cpu0
			}
		}
	}

	// Fixed rate, in turns as well; the rounds' answers are pooled.
	for round := range o.rounds {
		order := servers
		if round%2 == 1 {
			order = []*dnsServer{ddns, cdns}
		}
		for _, s := range order {
			if err := ctx.Err(); err != nil {
				return err
			}
			drops0 := udpDrops(s.addr)
			res, err := fixedRate(s.addr, qs, o.rate, o.rateDuration, 16)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			fmt.Printf("dnsbench: %d/s round %d %-7s p50 %s p99 %s (%d not positive, %d lost, %d dropped by the server's socket; sender at most %v behind)\n",
				o.rate, round+1, s.name, latency(res, 50), latency(res, 99), res.failed, res.lost, udpDrops(s.addr)-drops0, res.behind.Round(time.Microsecond))
			reports[s].rate = reports[s].rate.merge(res)
		}
	}

	if err := timeCreates(ctx, client, servers, reports, o.creates, o.poll, o.separate, [2]int{o.serverCPU, o.clientCPU}); err != nil {
		return err
	}
	if o.creates > 0 {
		first, diff := paired(reports[ddns].toResolve, reports[cdns].toResolve)
		fmt.Printf("dnsbench: create-to-resolvable of %d Services: %s answered first for %d, %s for %d; median of %s's time minus %s's %.3f ms\n",
			o.creates, ddns.name, first, cdns.name, o.creates-first, ddns.name, cdns.name, float64(diff)/float64(time.Millisecond))
		if o.separate {
			fmt.Printf("dnsbench: (each server on a CPU of its own for these, swapped every other Service; -aa shows what two equal servers differ by)\n")
		}
	}
	for _, s := range servers {
		if reports[s].rssAfter, err = residentBytes(s.proc.pid()); err != nil {
			return err
		}
	}
	for _, s := range servers {
		if s.proc.exited() {
			return fmt.Errorf("%s exited during the run: %v", s.name, s.proc.err)
		}
	}
	printReport(o, servers, reports)
	fmt.Printf("dnsbench: load average %s at the end\n", loadAverage())
	return nil
}

// waitSynced waits until s answers every question of last positively,
// the headless one with all its endpoints.
func waitSynced(ctx context.Context, s *dnsServer, last []question, endpoints int) error {
	var lastErr error
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
		if s.proc.exited() {
			return false, fmt.Errorf("%s exited: %v", s.name, s.proc.err)
		}
		for _, q := range last {
			r, err := exchange(s.addr, q.name, q.qtype, time.Second)
			if err != nil {
				lastErr = err
				return false, nil
			}
			want := 1
			if strings.HasPrefix(q.name, "hl-") {
				want = endpoints
			}
			if len(r.Answer) < want {
				lastErr = fmt.Errorf("%s: %d records", q.name, len(r.Answer))
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%s did not answer for the whole cluster (last: %v): %w", s.name, lastErr, err)
	}
	return nil
}

// timeCreates creates n Services one after the other and times, for each
// server, how long from the create request until it answers the name.
func timeCreates(ctx context.Context, client kubernetes.Interface, servers []*dnsServer, reports map[*dnsServer]*report, n int, poll time.Duration, separate bool, cpus [2]int) error {
	const ns = "bench-0"
	for i := range n {
		name := fmt.Sprintf("fresh-%d", i)
		fqdn := name + "." + ns + ".svc." + zone
		stop := make(chan struct{})
		type seen struct {
			at  time.Time
			err error
		}
		results := make([]chan seen, len(servers))
		for j, s := range servers {
			results[j] = make(chan seen, 1)
			go func() {
				at, err := firstAnswer(s.addr, fqdn, poll, stop)
				results[j] <- seen{at, err}
			}()
		}
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.ServiceSpec{
				IPFamilyPolicy: &requireDualStack,
				Ports:          []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
			},
		}
		if separate {
			// Each server on a CPU of its own, swapped every other
			// Service, so that neither waits for the other to handle the
			// same watch event.
			for j, s := range servers {
				if err := pin(strconv.Itoa(s.proc.pid()), cpus[(i+j)%2]); err != nil {
					return err
				}
			}
		}
		start := time.Now()
		_, err := client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			close(stop)
			return fmt.Errorf("creating %s: %w", name, err)
		}
		timeout := time.AfterFunc(30*time.Second, func() { close(stop) })
		for j, s := range servers {
			r := <-results[j]
			if r.err != nil {
				return fmt.Errorf("%s: %w", s.name, r.err)
			}
			if r.at.IsZero() {
				return fmt.Errorf("%s did not answer %s within 30 s of its creation", s.name, fqdn)
			}
			reports[s].toResolve = append(reports[s].toResolve, r.at.Sub(start))
		}
		if timeout.Stop() {
			close(stop)
		}
		if err := client.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("deleting %s: %w", name, err)
		}
	}
	if separate {
		for _, s := range servers {
			if err := pin(strconv.Itoa(s.proc.pid()), cpus[0]); err != nil {
				return err
			}
		}
	}
	return nil
}

// paired compares two servers' times for the same Services: how many
// times a was the quicker, and the median of a's time minus b's.
func paired(a, b []time.Duration) (aFirst int, median time.Duration) {
	var d []time.Duration
	for i := range min(len(a), len(b)) {
		if a[i] < b[i] {
			aFirst++
		}
		d = append(d, a[i]-b[i])
	}
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	return aFirst, d[len(d)/2]
}

// latency is a percentile of r in milliseconds, or "lost" when it falls
// among the questions without a positive answer.
func latency(r rateResult, p float64) string {
	d, ok := r.percentile(p)
	if !ok {
		return "lost"
	}
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

func printReport(o options, servers []*dnsServer, reports map[*dnsServer]*report) {
	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
	pct := func(ds []time.Duration, p float64) time.Duration {
		s := slices.Sorted(slices.Values(ds))
		if len(s) == 0 {
			return 0
		}
		return s[int(p/100*float64(len(s)-1))]
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "\n\t")
	for _, s := range servers {
		fmt.Fprintf(w, "%s\t", s.name)
	}
	fmt.Fprintln(w)
	row := func(label string, f func(*report) string) {
		fmt.Fprintf(w, "%s\t", label)
		for _, s := range servers {
			fmt.Fprintf(w, "%s\t", f(reports[s]))
		}
		fmt.Fprintln(w)
	}
	row("saturation, queries/s (best round)", func(r *report) string { return fmt.Sprintf("%.0f", r.sat.qps()) })
	row("  queries per CPU-second", func(r *report) string {
		return fmt.Sprintf("%.0f", float64(r.sat.ok+r.sat.failed)/r.satCPU.Seconds())
	})
	row(fmt.Sprintf("p50 at %d/s", o.rate), func(r *report) string { return latency(r.rate, 50) })
	row(fmt.Sprintf("p99 at %d/s", o.rate), func(r *report) string { return latency(r.rate, 99) })
	row("  not answered positively", func(r *report) string { return fmt.Sprint(r.rate.lost + r.rate.failed) })
	row("resident memory, synced", func(r *report) string { return mib(r.rssSynced) })
	row("resident memory, at the end", func(r *report) string { return mib(r.rssAfter) })
	row("create-to-resolvable p50", func(r *report) string { return ms(pct(r.toResolve, 50)) })
	row("create-to-resolvable max", func(r *report) string { return ms(pct(r.toResolve, 100)) })
	_ = w.Flush()
	fmt.Println()
}
