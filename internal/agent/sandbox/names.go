package sandbox

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/duet-net/duet/internal/netns"
)

const (
	// NetNSDir is where pod namespaces are bind-mounted, as `ip netns` does,
	// so that they outlive the agent and show in `ip netns list`.
	NetNSDir = netns.Dir

	// nsPrefix starts every pod namespace name: duet-<node tag>-<pod hash>.
	nsPrefix = "duet-"
	// vethPrefix starts every host-side veth: duet<11 hex digits of the pod hash>.
	vethPrefix = "duet"
	// idAlias prefixes the sandbox ID kept as the alias of the pod's loopback,
	// which is how List recovers IDs after a crash.
	idAlias = "duet-sandbox:"

	nodeTagLen = 8  // hex digits of sha256(node namespace path)
	podHashLen = 12 // hex digits of sha256(sandbox ID)
	maxIDLen   = 255 - len(idAlias)
)

// names are the kernel names of one sandbox.
type names struct {
	netns string // /run/netns/duet-<tag>-<hash>
	veth  string // host side, in the node namespace
}

// nodeTag identifies a node namespace by its path, so that its pods' namespaces
// can be told apart from other nodes' in the shared /run/netns. The directory is
// resolved (/var/run/netns and /run/netns are one) but not the file itself, so
// the tag is stable even after the node namespace is gone.
func nodeTag(nodeNS string) (string, error) {
	if nodeNS == "" {
		return "", fmt.Errorf("node namespace path is empty")
	}
	p, err := filepath.Abs(nodeNS)
	if err != nil {
		return "", fmt.Errorf("node namespace %s: %w", nodeNS, err)
	}
	if dir, err := filepath.EvalSymlinks(filepath.Dir(p)); err == nil {
		p = filepath.Join(dir, filepath.Base(p))
	}
	sum := sha256.Sum256([]byte(p))
	return hex.EncodeToString(sum[:])[:nodeTagLen], nil
}

func podHash(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])[:podHashLen]
}

func namesFor(tag, id string) names {
	return namesForHash(tag, podHash(id))
}

func namesForHash(tag, hash string) names {
	return names{
		netns: filepath.Join(NetNSDir, nsPrefix+tag+"-"+hash),
		veth:  vethPrefix + hash[:15-len(vethPrefix)],
	}
}

// parseNetNSName returns the pod hash of a namespace name of the node with tag,
// or false if the name is not one of that node's sandboxes.
func parseNetNSName(tag, name string) (string, bool) {
	hash, ok := strings.CutPrefix(name, nsPrefix+tag+"-")
	if !ok || len(hash) != podHashLen {
		return "", false
	}
	for _, c := range hash {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", false
		}
	}
	return hash, true
}

// NetNSPath is the namespace path Setup uses for id on the node nodeNS.
func NetNSPath(nodeNS, id string) (string, error) {
	tag, err := nodeTag(nodeNS)
	if err != nil {
		return "", err
	}
	return namesFor(tag, id).netns, nil
}

// macFor derives the pod interface's MAC from its IPv4 address (0a:58:a.b.c.d,
// as the CNI bridge plugin does), or from the last four bytes of its IPv6
// address on an IPv6-only pod. A pod address reused by a later pod then comes
// with the same MAC, so neighbours' caches stay right, and two pods of one node
// never share a MAC because they never share an address.
func macFor(addrs []netip.Prefix) net.HardwareAddr {
	var a netip.Addr
	for _, p := range addrs {
		if p.Addr().Is4() {
			a = p.Addr()
			break
		}
		a = p.Addr()
	}
	b := a.As16()
	return net.HardwareAddr{0x0a, 0x58, b[12], b[13], b[14], b[15]}
}
