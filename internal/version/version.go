// Package version holds the build's version, set at link time by make.
package version

import (
	"fmt"
	"runtime"
)

// Set with -ldflags "-X github.com/duet-net/duet/internal/version.Version=...".
var (
	Version = "v0.0.0-dev"
	Commit  = "unknown"
)

// String is the one-line version report.
func String() string {
	return fmt.Sprintf("duet %s (commit %s, %s, %s/%s)", Version, Commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
