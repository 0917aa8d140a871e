package pods

import (
	"syscall"
	"testing"
)

// TestHostProcessExitCodes checks the exit codes of real processes as
// container statuses show them: their own, or 128+signal when a signal
// killed them (no namespaces are entered, so no root is needed).
func TestHostProcessExitCodes(t *testing.T) {
	for _, tt := range []struct {
		name string
		argv []string
		sig  syscall.Signal
		want int
	}{
		{"exits 0", []string{"true"}, 0, 0},
		{"exits 3", []string{"sh", "-c", "exit 3"}, 0, 3},
		{"killed by SIGKILL", []string{"sleep", "60"}, syscall.SIGKILL, 137},
		{"killed by SIGTERM", []string{"sleep", "60"}, syscall.SIGTERM, 143},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NSEnterRunner{}.Start(ProcessSpec{Argv: tt.argv})
			if err != nil {
				t.Fatal(err)
			}
			if tt.sig != 0 {
				if err := p.Signal(tt.sig); err != nil {
					t.Fatal(err)
				}
			}
			code, err := p.Wait()
			if err != nil || code != tt.want {
				t.Errorf("Wait = %d, %v; want %d", code, err, tt.want)
			}
		})
	}
}
