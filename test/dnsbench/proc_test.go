package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name, stat string
		want       time.Duration
		err        string
	}{
		{name: "plain", stat: "1234 (coredns) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 40 0 0 20 0 9 0 100 0 0",
			want: 2900 * time.Millisecond},
		{name: "a command with spaces and parentheses", stat: "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0",
			want: 70 * time.Millisecond},
		{name: "no command", stat: "1234 coredns S 1", err: "no command name"},
		{name: "too short", stat: "1 (x) S 1 2 3", err: "fields after the command name"},
		{name: "not a number", stat: "1 (x) S 1 1 1 0 -1 0 0 0 0 0 x 4 0 0", err: `field 14 "x"`},
		{name: "negative", stat: "1 (x) S 1 1 1 0 -1 0 0 0 0 0 -3 4 0 0", err: `field 14 "-3"`},
		{name: "out of range", stat: "1 (x) S 1 1 1 0 -1 0 0 0 0 0 4611686018427387903 4 0 0", err: "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.stat))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseStatCPU = %v, %v; want an error with %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseStatCPU = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

// This process's own stat parses, and its CPU time only grows.
func TestProcessCPUOfSelf(t *testing.T) {
	before, err := processCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		after, err := processCPU(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if after < before {
			t.Fatalf("CPU time went from %v back to %v", before, after)
		}
		if after > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CPU time stayed at %v while spinning", before)
		}
		for i := 0; i < 1e6; i++ {
			_ = strings.Repeat("x", i%7)
		}
	}
	rss, err := residentBytes(os.Getpid())
	if err != nil || rss <= 0 {
		t.Fatalf("residentBytes = %d, %v", rss, err)
	}
}

func FuzzParseStatCPU(f *testing.F) {
	f.Add([]byte("1234 (coredns) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 40 0 0"))
	f.Add([]byte("7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0"))
	f.Add([]byte(")"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseStatCPU(b)
		if err == nil && d < 0 {
			t.Fatalf("parseStatCPU(%q) = %v, negative", b, d)
		}
	})
}

const udpTable = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 0100007F:A3E1 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123 2 0000000000000000 17
  101: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 124 2 0000000000000000 0
  102: 0100007F:A3E1 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 125 2 0000000000000000 3
`

func TestParseUDPDrops(t *testing.T) {
	tests := []struct {
		local string
		want  int64
		ok    bool
	}{
		{"0100007F:A3E1", 20, true}, // two sockets on one port (SO_REUSEPORT)
		{"0100007f:a3e1", 20, true},
		{"0100007F:0035", 0, true},
		{"0100007F:0036", 0, false},
		{"local_address", 0, false}, // the header is no socket
	}
	for _, tt := range tests {
		got, ok := parseUDPDrops([]byte(udpTable), tt.local)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseUDPDrops(%s) = %d, %v; want %d, %v", tt.local, got, ok, tt.want, tt.ok)
		}
	}
	if _, ok := parseUDPDrops([]byte(strings.Replace(udpTable, " 17\n", " x\n", 1)), "0100007F:A3E1"); ok {
		t.Error("a drops column that is no number was read")
	}
}

func FuzzParseUDPDrops(f *testing.F) {
	f.Add([]byte(udpTable), "0100007F:A3E1")
	f.Add([]byte("a\nb c d e f g h i j k l m n"), "c")
	f.Fuzz(func(t *testing.T, table []byte, local string) {
		if n, ok := parseUDPDrops(table, local); n < 0 || (!ok && n != 0) {
			t.Fatalf("parseUDPDrops = %d, %v", n, ok)
		}
	})
}
