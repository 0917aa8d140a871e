package ipam

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// importHostLocal takes over the reservations host-local left in the
// network's directory (one file per address, named by the address and
// holding "containerID\r\nifname"), so that switching a live node from
// host-local to duet-ipam never hands out an address a running pod holds.
// It runs once, when the store is created; the files stay, untouched.
func importHostLocal(tx *bolt.Tx, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	t := newTxn(tx)
	byOwner := map[Owner][]netip.Addr{}
	var order []Owner
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		a, err := netip.ParseAddr(strings.ReplaceAll(e.Name(), "_", ":"))
		if err != nil {
			continue // lock, last_reserved_ip.N, our own file
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		id, ifname, _ := strings.Cut(strings.TrimSpace(string(data)), "\r\n")
		o := Owner{ContainerID: strings.TrimSpace(id), IfName: strings.TrimSpace(ifname)}
		if o.ContainerID == "" {
			continue // host-local's empty files after a failed write
		}
		a = a.Unmap()
		if err := t.putRecord(a, addrRecord{ContainerID: o.ContainerID, IfName: o.IfName}); err != nil {
			return err
		}
		if _, ok := byOwner[o]; !ok {
			order = append(order, o)
		}
		byOwner[o] = append(byOwner[o], a)
	}
	for _, o := range order {
		if err := t.putOwner(o, byOwner[o]); err != nil {
			return err
		}
	}
	return nil
}
