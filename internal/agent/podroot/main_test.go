package podroot

import (
	"os"
	"testing"

	"github.com/duet-net/duet/internal/testutil/privatemounts"
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
	os.Exit(privatemounts.Main(m, privateEnv))
}
