package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The benchmarks exec duet-ipam and Debian's host-local side by side, on
// the same dual-stack ranges (a /16 and a /64), as a runtime does: env
// variables and the config on stdin, one process per call. Run them with
//
//	go test -run '^$' -bench . ./cmd/duet-ipam
//
// Each reports latencies as metrics and logs a side-by-side table.

const benchRanges = `[[{"subnet":"10.128.0.0/16"}],[{"subnet":"fd00:10:128::/64"}]]`

type benchPlugin struct{ name, bin string }

func benchPlugins(b *testing.B) []benchPlugin {
	hostLocal := filepath.Join(referencePlugins, "host-local")
	if _, err := os.Stat(hostLocal); err != nil {
		b.Fatalf("host-local is missing (%v): apt-get install containernetworking-plugins", err)
	}
	return []benchPlugin{{"duet-ipam", pluginBin}, {"host-local", hostLocal}}
}

func (p benchPlugin) conf(dataDir string) []byte {
	// cniVersion 1.0.0: the newest that Debian's host-local speaks.
	return []byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench","type":"bridge","ipam":{"type":%q,"dataDir":%q,"ranges":%s}}`, p.name, dataDir, benchRanges))
}

// timed runs one call and returns its wall time, exec and wait included.
func timed(b *testing.B, iv invocation) time.Duration {
	start := time.Now()
	if _, err := iv.run(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func pct(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p+0.5)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkSequentialAddDel: bare exec (VERSION); 1,000 ADD+DEL pairs on an
// empty node; then 1,000 ADDs that stay, and 200 ADD+DEL pairs with those
// 1,000 held. The two plugins take turns call by call, so that both see the
// same machine: on a shared machine the load moves more than either plugin.
func BenchmarkSequentialAddDel(b *testing.B) {
	_, ns := netns(b)
	plugins := benchPlugins(b)
	type lat struct{ version, add0, del0, fill, add1k, del1k []time.Duration }
	for i := 0; i < b.N; i++ {
		confs := make([][]byte, len(plugins))
		for k, p := range plugins {
			confs[k] = p.conf(b.TempDir())
		}
		l := make([]lat, len(plugins))
		each := func(fn func(k int, p benchPlugin)) {
			for k, p := range plugins {
				fn(k, p)
			}
		}
		call := func(k int, cmd, id string) time.Duration {
			return timed(b, invocation{plugins[k].bin, cmd, id, ns, confs[k]})
		}
		for j := 0; j < 50; j++ {
			each(func(k int, p benchPlugin) {
				l[k].version = append(l[k].version, timed(b, invocation{p.bin, "VERSION", "", "", nil}))
			})
		}
		for j := 0; j < 1000; j++ {
			id := fmt.Sprintf("empty%d", j)
			each(func(k int, _ benchPlugin) { l[k].add0 = append(l[k].add0, call(k, "ADD", id)) })
			each(func(k int, _ benchPlugin) { l[k].del0 = append(l[k].del0, call(k, "DEL", id)) })
		}
		for j := 0; j < 1000; j++ {
			id := fmt.Sprintf("held%d", j)
			each(func(k int, _ benchPlugin) { l[k].fill = append(l[k].fill, call(k, "ADD", id)) })
		}
		for j := 0; j < 200; j++ {
			id := fmt.Sprintf("full%d", j)
			each(func(k int, _ benchPlugin) { l[k].add1k = append(l[k].add1k, call(k, "ADD", id)) })
			each(func(k int, _ benchPlugin) { l[k].del1k = append(l[k].del1k, call(k, "DEL", id)) })
		}
		var lines []string
		for k, p := range plugins {
			m := l[k]
			short := strings.ReplaceAll(p.name, "-", "")
			report := func(v time.Duration, what string) { b.ReportMetric(ms(v), short+"_"+what+"_ms") }
			report(pct(m.version, .5), "version_p50")
			report(pct(m.add0, .5), "add_p50")
			report(pct(m.add0, .99), "add_p99")
			report(pct(m.del0, .5), "del_p50")
			report(pct(m.del0, .99), "del_p99")
			report(pct(m.add1k, .5), "add_p50_at1000")
			report(pct(m.del1k, .5), "del_p50_at1000")
			lines = append(lines, fmt.Sprintf("%-10s %8.2f | %8.2f %8.2f %8.2f %8.2f | %8.2f %8.2f | %8.2f %8.2f %8.2f %8.2f",
				p.name, ms(pct(m.version, .5)),
				ms(pct(m.add0, .5)), ms(pct(m.add0, .99)), ms(pct(m.del0, .5)), ms(pct(m.del0, .99)),
				ms(pct(m.fill[:100], .5)), ms(pct(m.fill[900:], .5)),
				ms(pct(m.add1k, .5)), ms(pct(m.add1k, .99)), ms(pct(m.del1k, .5)), ms(pct(m.del1k, .99))))
		}
		b.Logf("\nms          VERSION |  ADD p50  ADD p99  DEL p50  DEL p99 | fill ADD p50: first 100, last 100 | at 1,000 held: ADD p50  ADD p99  DEL p50  DEL p99\n%s", strings.Join(lines, "\n"))
	}
}

// BenchmarkConcurrentAdd110: a node's worth of pods (110) started at once,
// each ADD its own process, on a fresh store; the plugins take turns, one
// burst each per iteration. Metrics: the time until the last ADD returned,
// and the latency of single ADDs within the burst.
func BenchmarkConcurrentAdd110(b *testing.B) {
	_, ns := netns(b)
	plugins := benchPlugins(b)
	totals := make([][]time.Duration, len(plugins))
	lats := make([][]time.Duration, len(plugins))
	for i := 0; i < b.N; i++ {
		for k, p := range plugins {
			conf := p.conf(b.TempDir())
			const n = 110
			errs := make([]error, n)
			outs := make([][]byte, n)
			took := make([]time.Duration, n)
			var wg sync.WaitGroup
			start := time.Now()
			for j := 0; j < n; j++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					t := time.Now()
					outs[j], errs[j] = invocation{p.bin, "ADD", fmt.Sprintf("burst%d", j), ns, conf}.run()
					took[j] = time.Since(t)
				}()
			}
			wg.Wait()
			totals[k] = append(totals[k], time.Since(start))
			lats[k] = append(lats[k], took...)
			seen := map[string]bool{}
			for j := 0; j < n; j++ {
				if errs[j] != nil {
					b.Fatal(errs[j])
				}
				for _, ip := range resultIPs(b, outs[j]) {
					if seen[ip] {
						b.Fatalf("%s: %s handed out twice", p.name, ip)
					}
					seen[ip] = true
				}
			}
		}
	}
	var lines []string
	for k, p := range plugins {
		short := strings.ReplaceAll(p.name, "-", "")
		b.ReportMetric(ms(pct(totals[k], .5)), short+"_burst_ms")
		b.ReportMetric(ms(pct(lats[k], .5)), short+"_add_p50_ms")
		b.ReportMetric(ms(pct(lats[k], .99)), short+"_add_p99_ms")
		lines = append(lines, fmt.Sprintf("%-10s %10.1f %10.1f %10.1f", p.name, ms(pct(totals[k], .5)), ms(pct(lats[k], .5)), ms(pct(lats[k], .99))))
	}
	b.Logf("\n110 concurrent ADDs, ms: burst (median of %d)   ADD p50   ADD p99\n%s", b.N, strings.Join(lines, "\n"))
}
