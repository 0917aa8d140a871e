//go:build tools

// Package upstream pins the upstream programs Duet's CI builds: the e2e test
// binary (go test -c k8s.io/kubernetes/test/e2e), agnhost, and the ginkgo
// CLI that runs e2e.test in parallel processes.
package upstream

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
