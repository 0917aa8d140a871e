package podroot

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// privateEnv marks the copy of the test binary that runs in a private mount
// namespace; creatorEnv the copy that plays an agent killed while it has, or
// is making, a world (see TestCreatorKilled).
const (
	privateEnv = "DUET_PODROOT_TEST_PRIVATE_MOUNTS"
	creatorEnv = "DUET_PODROOT_TEST_CREATOR"
)

// TestMain runs the tests, as root, in a private copy of the machine's mount
// namespace, so that what a failed test leaves mounted goes with the
// process instead of staying in the machine's mount table. The tests check
// the mount table themselves: nothing may be left in it either way.
func TestMain(m *testing.M) {
	if dir := os.Getenv(creatorEnv); dir != "" {
		os.Exit(runCreator(dir))
	}
	if os.Geteuid() != 0 || os.Getenv(privateEnv) != "" {
		os.Exit(m.Run())
	}
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), privateEnv+"=1")
	// Go makes / recursively private after unsharing the mount namespace.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if err := cmd.Run(); err != nil {
		if exit, ok := err.(*exec.ExitError); ok {
			os.Exit(exit.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "running the tests in a private mount namespace:", err)
		os.Exit(1)
	}
	os.Exit(0)
}
