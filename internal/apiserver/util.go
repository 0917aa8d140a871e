package apiserver

import (
	"fmt"

	apimachineryversion "k8s.io/apimachinery/pkg/version"
	basecompatibility "k8s.io/component-base/compatibility"

	duetversion "github.com/duet-net/duet/internal/version"

	"k8s.io/apimachinery/pkg/runtime/schema"
)

func utilruntimeMust(err error) {
	if err != nil {
		panic(err)
	}
}

func fieldLabelError(gvk schema.GroupVersionKind, label string) error {
	return fmt.Errorf("field label not supported: %s (for %s)", label, gvk.Kind)
}

// servedVersion reports a parseable Kubernetes version on /version
// (kubectl version fails on the library's "v0.0.0-master" placeholder),
// marked as Duet's with the build's own version.
type servedVersion struct {
	basecompatibility.EffectiveVersion
}

func (v servedVersion) Info() *apimachineryversion.Info {
	info := v.EffectiveVersion.Info()
	if info == nil {
		return nil
	}
	bin := v.BinaryVersion()
	info.GitVersion = fmt.Sprintf("v%d.%d.%d+duet", bin.Major(), bin.Minor(), bin.Patch())
	info.GitCommit = duetversion.Commit
	info.GitTreeState = "clean"
	return info
}
