package netns

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// mount is one line of /proc/self/mountinfo (proc(5)).
type mount struct {
	ID, Parent int
	Root       string // the mounted object: "/netns", or "net:[4026532174]" for a namespace
	MountPoint string
	FSType     string
	Shared     bool // propagates mounts to its peers ("shared:N")
}

// readMounts reads the calling thread's mount table.
func readMounts() ([]mount, error) {
	data, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		return nil, err
	}
	return parseMountInfo(data)
}

// parseMountInfo parses the mountinfo format:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// ID, parent ID, device, root, mount point, options, optional fields up to
// "-", then file system type, source and super block options.
func parseMountInfo(data []byte) ([]mount, error) {
	var out []mount
	s := bufio.NewScanner(bytes.NewReader(data))
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; s.Scan(); n++ {
		line := s.Text()
		if line == "" {
			continue
		}
		m, err := parseMountLine(line)
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, err)
		}
		out = append(out, m)
	}
	return out, s.Err()
}

func parseMountLine(line string) (mount, error) {
	f := strings.Fields(line)
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 7 || sep < 0 || sep+1 >= len(f) {
		return mount{}, fmt.Errorf("malformed: %q", line)
	}
	id, err1 := strconv.Atoi(f[0])
	parent, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return mount{}, fmt.Errorf("malformed mount IDs: %q", line)
	}
	m := mount{ID: id, Parent: parent, Root: unescape(f[3]), MountPoint: unescape(f[4]), FSType: f[sep+1]}
	for _, opt := range f[6:sep] {
		m.Shared = m.Shared || strings.HasPrefix(opt, "shared:")
	}
	return m, nil
}

// unescape undoes the octal escapes (\040 for a space) the kernel writes for
// space, tab, newline and backslash in paths.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountsAt returns the mounts whose mount point is path, bottom first.
func mountsAt(ms []mount, path string) []mount {
	var out []mount
	for _, m := range ms {
		if m.MountPoint == path {
			out = append(out, m)
		}
	}
	return out
}
