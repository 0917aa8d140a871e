package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// clockTick is the unit of the CPU times in /proc/<pid>/stat: USER_HZ,
// which is 100 on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// parseStatCPU reads the user and system CPU time of all of a process's
// threads from the text of /proc/<pid>/stat: fields 14 and 15, counted
// after the command name, which is in parentheses and may itself hold
// spaces and parentheses.
func parseStatCPU(stat []byte) (time.Duration, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("/proc stat %.40q: no command name", stat)
	}
	// After ") " come the fields from the third (state) on.
	fields := strings.Fields(string(stat[end+1:]))
	const utime, stime = 14 - 3, 15 - 3
	if len(fields) <= stime {
		return 0, fmt.Errorf("/proc stat %.40q: %d fields after the command name, want at least %d", stat, len(fields), stime+1)
	}
	var total time.Duration
	for _, i := range []int{utime, stime} {
		v, err := strconv.ParseUint(fields[i], 10, 63)
		if err != nil {
			return 0, fmt.Errorf("/proc stat field %d %q: %w", i+3, fields[i], err)
		}
		if v > uint64(1<<62)/uint64(clockTick) {
			return 0, fmt.Errorf("/proc stat field %d %q: out of range", i+3, fields[i])
		}
		total += time.Duration(v) * clockTick
	}
	return total, nil
}

// processCPU is the CPU time process pid has used.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(b)
}

// residentBytes is process pid's resident set size (VmRSS).
func residentBytes(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS of %d: %w", pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// pinSelf binds every thread of this process to cpu; threads started
// later inherit it from the thread that starts them.
func pinSelf(cpu int) error { return pin("self", cpu) }

// pin binds every thread of process pid ("self" for this one) to cpu.
func pin(pid string, cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := filepath.Glob("/proc/" + pid + "/task/*")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(filepath.Base(t))
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			return fmt.Errorf("pinning thread %d to CPU %d: %w", tid, cpu, err)
		}
	}
	return nil
}

// loadAverage is the first field of /proc/loadavg, the machine's load over
// the last minute ("?" when unreadable).
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// parseUDPDrops adds up, in the text of /proc/net/udp, the datagrams the
// kernel dropped for the sockets bound to local address local (as the
// file writes it: hex address, colon, hex port), its last column; ok is
// false when no such socket is listed.
func parseUDPDrops(table []byte, local string) (drops int64, ok bool) {
	for i, line := range strings.Split(string(table), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 13 || !strings.EqualFold(f[1], local) {
			continue
		}
		n, err := strconv.ParseInt(f[len(f)-1], 10, 64)
		if err != nil || n < 0 || drops > math.MaxInt64-n {
			return 0, false
		}
		drops, ok = drops+n, true
	}
	return drops, ok
}

// udpDrops is how many datagrams the kernel dropped for the UDP socket
// bound to addr (127.0.0.1:port) because its receive buffer was full;
// -1 when it cannot tell.
func udpDrops(addr string) int64 {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return -1
	}
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return -1
	}
	a := ap.Addr().As4()
	// The address is written as the host-order (little-endian) uint32.
	local := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], ap.Port())
	n, ok := parseUDPDrops(b, local)
	if !ok {
		return -1
	}
	return n
}
