package nodestatus

import (
	"strings"
	"testing"
)

func TestParseMemTotal(t *testing.T) {
	tests := []struct {
		name, in string
		want     int64
		err      bool
	}{
		{"first line", "MemTotal:       16314164 kB\nMemFree:         1000 kB\n", 16314164 * 1024, false},
		{"after other lines", "MemFree: 1 kB\nMemTotal: 2048 kB\n", 2048 * 1024, false},
		{"no MemTotal", "MemFree: 1 kB\n", 0, true},
		{"empty", "", 0, true},
		{"not kB", "MemTotal: 2048 MB\n", 0, true},
		{"not a number", "MemTotal: lots kB\n", 0, true},
		{"negative", "MemTotal: -5 kB\n", 0, true},
		{"overflowing", "MemTotal: 99999999999999999 kB\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMemTotal(strings.NewReader(tt.in))
			if (err != nil) != tt.err || got != tt.want {
				t.Errorf("parseMemTotal(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.err)
			}
		})
	}
}

func FuzzParseMemTotal(f *testing.F) {
	f.Add("MemTotal:       16314164 kB\n")
	f.Add("MemFree: 1 kB\nMemTotal: 2048 kB\n")
	f.Add("MemTotal: 2048 MB")
	f.Fuzz(func(t *testing.T, in string) {
		got, err := parseMemTotal(strings.NewReader(in))
		if err == nil && (got < 0 || got%1024 != 0) {
			t.Errorf("parseMemTotal(%q) = %d: not a whole number of kB", in, got)
		}
	})
}

func TestMachineCapacity(t *testing.T) {
	c := machineCapacity()
	if c.Cpu().Value() < 1 || c.Pods().Value() != MaxPods {
		t.Errorf("capacity %v: want at least one CPU and %d pods", c, MaxPods)
	}
	// Every Linux machine has /proc/meminfo and a root file system.
	if c.Memory().Value() <= 0 || c.StorageEphemeral().Value() <= 0 {
		t.Errorf("capacity %v: want memory and ephemeral-storage", c)
	}
}
