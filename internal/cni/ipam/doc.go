// Package ipam is duet-ipam: a CNI IPAM plugin that is a drop-in
// replacement for host-local, with its reservations in one bbolt file per
// network instead of one file per address.
//
// # Configuration
//
// The ipam section takes host-local's keys, so changing "type" from
// "host-local" to "duet-ipam" is the whole migration:
//
//	"ipam": {
//	  "type": "duet-ipam",
//	  "ranges": [
//	    [{"subnet": "10.244.1.0/24"}],
//	    [{"subnet": "fd00:10:244:1::/64", "rangeStart": "fd00:10:244:1::10", "gateway": "fd00:10:244:1::1"}]
//	  ],
//	  "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
//	  "dataDir": "/var/lib/cni/networks",
//	  "resolvConf": "/etc/resolv.conf",
//	  "cooldown": "60s"
//	}
//
// Each range set (one family, one or more ranges) gives an attachment one
// address; the gateway is the subnet's first usable address (.1, ::1) unless
// given, and is never handed out, nor is the network address or the IPv4 broadcast.
// Instead of ranges, "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]
// (at most one per family, primary first, as the Duet agent passes a
// node's spec.podCIDRs) makes one range set per CIDR. "cooldown" is Duet's
// own: how long a released address rests before reuse (default 60s, "0s"
// turns it off). Requested addresses come as in host-local: CNI_ARGS
// IP=..., args.cni.ips, runtimeConfig.ips; runtimeConfig.ipRanges is
// honoured too.
//
// # Policy and store
//
// Which address an attachment gets is Duet's one pod-IP policy,
// alloc.PodIPs, which the Duet agent uses too; the reservations are kept by
// internal/alloc/boltstore in DataDir/<network>/duet-ipam.db: per address,
// its holder (container ID and interface) or the time it was released; an
// index by holder, so DEL and CHECK look up one key; the last address
// reserved per range set (the round-robin cursor); and the cool-down queue.
// Each call locks the network's directory (as host-local does), opens the
// file, changes it in one transaction that is on disk before the call
// returns, and closes it. On first use it takes over host-local's
// reservations found in the same directory, so a live node can switch
// without handing out a held address.
//
// # Errors
//
// Configuration errors (including a range that cannot be a pod subnet, and
// GC without cni.dev/valid-attachments) are code 7 and name the field; a
// failure to read or write the store (a full disk, say) is code 5; waiting
// too long for another invocation's lock is code 11; STATUS on an
// exhausted range is code 50; CHECK of an unknown attachment is code 3.
package ipam
