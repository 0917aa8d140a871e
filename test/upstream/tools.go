//go:build tools

// Package upstream pins the two upstream programs Duet's CI builds: the
// e2e test binary (go test -c k8s.io/kubernetes/test/e2e) and agnhost.
package upstream

import (
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
