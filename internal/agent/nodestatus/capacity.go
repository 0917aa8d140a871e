package nodestatus

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// machineCapacity is what this machine offers pods, as the kubelet reports
// it: the CPUs the agent may run on, the memory, the root file system's
// size as ephemeral storage, and MaxPods. A resource it cannot read is left
// out (and pods requesting it fit nowhere) rather than guessed.
func machineCapacity() corev1.ResourceList {
	list := corev1.ResourceList{
		corev1.ResourcePods: *resource.NewQuantity(MaxPods, resource.DecimalSI),
		corev1.ResourceCPU:  *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		if mem, err := parseMemTotal(f); err == nil {
			list[corev1.ResourceMemory] = *resource.NewQuantity(mem, resource.BinarySI)
		}
		f.Close()
	}
	var fs unix.Statfs_t
	if err := unix.Statfs("/", &fs); err == nil && fs.Bsize > 0 {
		list[corev1.ResourceEphemeralStorage] = *resource.NewQuantity(int64(fs.Blocks)*fs.Bsize, resource.BinarySI)
	}
	return list
}

// parseMemTotal reads the MemTotal line of /proc/meminfo ("MemTotal:
// 16314164 kB"), in bytes.
func parseMemTotal(r io.Reader) (int64, error) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		rest, ok := strings.CutPrefix(s.Text(), "MemTotal:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("meminfo: MemTotal line %q: want a number of kB", s.Text())
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil || kb < 0 || kb > (1<<53)/1024 {
			return 0, fmt.Errorf("meminfo: MemTotal %q: not a size in kB", fields[0])
		}
		return kb * 1024, nil
	}
	if err := s.Err(); err != nil {
		return 0, fmt.Errorf("meminfo: %w", err)
	}
	return 0, fmt.Errorf("meminfo: no MemTotal line")
}
