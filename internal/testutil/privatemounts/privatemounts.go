// Package privatemounts runs a package's tests, as root, in a private copy
// of the machine's mount namespace, so that what a failed test leaves
// mounted goes away with the process instead of staying in the machine's
// mount table. It imports nothing of Duet's, so that the packages below
// roottest (netns) can use it too.
package privatemounts

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// Main is a TestMain body: as root, it runs the test binary again in a new
// mount namespace with env set, and returns its exit code; without root, or
// in that copy (env set), it runs the tests.
func Main(m *testing.M, env string) int {
	if os.Geteuid() != 0 || os.Getenv(env) != "" {
		return m.Run()
	}
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), env+"=1")
	// Go makes / recursively private after unsharing the mount namespace.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "running the tests in a private mount namespace:", err)
		return 1
	}
	return 0
}
