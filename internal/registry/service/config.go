// Package service holds the Service registry logic that is specific to
// Duet's dual-stack design: defaulting, the IP family fields of both API
// generations (the 1.16 spec.ipFamily and the GA
// ipFamilies/ipFamilyPolicy/clusterIPs), validation with Kubernetes' field
// paths and messages, and transactional cluster IP allocation.
//
// A request flows through it in this order, as in Kubernetes:
//
//	SetDefaults                   (at decode, every create and update)
//	PrepareForCreate / -Update    (family fields, type switches, re-apply)
//	ValidateCreate / -Update      (field.ErrorList, a 422 for the client)
//	Allocators.AllocateCreate / -Update, then persist, then Txn.Commit
//	                              (or Txn.Revert when persisting failed)
//	Allocators.Release            (after a delete)
//
// The Allocate calls run the Prepare step and the family checks themselves,
// so the API server may also call them first (from a BeginCreate or
// BeginUpdate hook, where Kubernetes allocates) and run Prepare and Validate
// afterwards: every step is idempotent.
package service

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/netaddr"
)

// Config is the cluster configuration the Service rules depend on.
type Config struct {
	// Ranges is --service-cluster-ip-range: one range, or two of different
	// families, the primary first.
	Ranges []netip.Prefix
	// DualStack is the IPv6DualStack feature gate. Off, the cluster is
	// single-stack and Ranges must hold one range.
	DualStack bool
}

// Validate checks that the configuration describes a cluster: one or two
// ranges, of different families, and a second one only with the feature
// gate on.
func (c Config) Validate() error {
	switch len(c.Ranges) {
	case 1:
	case 2:
		if netaddr.FamilyOf(c.Ranges[0].Addr()) == netaddr.FamilyOf(c.Ranges[1].Addr()) {
			return fmt.Errorf("--service-cluster-ip-range: %s and %s are both %s; a dual-stack cluster needs one range of each family",
				c.Ranges[0], c.Ranges[1], netaddr.FamilyOf(c.Ranges[0].Addr()))
		}
		if !c.DualStack {
			return fmt.Errorf("secondary service cluster-ip range(--service-cluster-ip-range[1]) can only be used if IPv6DualStack feature is enabled")
		}
	default:
		return fmt.Errorf("--service-cluster-ip-range: want one or two ranges, got %d", len(c.Ranges))
	}
	for _, r := range c.Ranges {
		if !r.IsValid() || r.Masked() != r {
			return fmt.Errorf("--service-cluster-ip-range: %s is not a network address", r)
		}
	}
	return nil
}

// Families returns the cluster's IP families, primary first.
func (c Config) Families() []netaddr.Family {
	fams := make([]netaddr.Family, 0, 2)
	for i, r := range c.Ranges {
		if i > 0 && !c.DualStack {
			break
		}
		fams = append(fams, netaddr.FamilyOf(r.Addr()))
	}
	return fams
}

// Primary is the family of the first range: the default for Services that
// do not ask for one.
func (c Config) Primary() netaddr.Family {
	if len(c.Ranges) == 0 {
		return netaddr.IPv4
	}
	return netaddr.FamilyOf(c.Ranges[0].Addr())
}

// IsDualStack reports whether the cluster serves both families.
func (c Config) IsDualStack() bool { return len(c.Families()) == 2 }

// Has reports whether the cluster serves family f.
func (c Config) Has(f corev1.IPFamily) bool {
	for _, fam := range c.Families() {
		if string(fam) == string(f) {
			return true
		}
	}
	return false
}

// primaryFamily is Primary spelled as the API spells it.
func (c Config) primaryFamily() corev1.IPFamily { return corev1.IPFamily(c.Primary()) }

// familyList is the cluster's families joined for messages: "IPv4, IPv6".
func (c Config) familyList() string {
	fams := c.Families()
	s := make([]string, len(fams))
	for i, f := range fams {
		s[i] = string(f)
	}
	return strings.Join(s, ", ")
}
