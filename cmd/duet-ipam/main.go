// Command duet-ipam is Duet's CNI IPAM plugin: a drop-in replacement for
// host-local (same ranges, routes and dataDir) that keeps its reservations
// in one bbolt file per network, indexed by owner, and speaks CNI 1.1
// (ADD, DEL, CHECK, GC, STATUS, VERSION). A runtime execs it once per call.
//
// It must stay small: nothing from k8s.io belongs in its import graph.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/duet-net/duet/internal/cni/ipam"
)

func main() {
	p := &ipam.Plugin{}
	skel.PluginMainFuncs(p.Funcs(), version.All, "duet-ipam: Duet's CNI IPAM plugin (host-local compatible, bbolt store)")
}
