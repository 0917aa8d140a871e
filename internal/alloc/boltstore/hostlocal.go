package boltstore

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/duet-net/duet/internal/alloc"
)

// importHostLocal takes over the reservations host-local left in the
// network's directory (one file per address, named by the address and
// holding "containerID\r\nifname"), so that switching a live node from
// host-local to duet-ipam never hands out an address a running pod holds.
// It runs once, when the store is created; the files stay, untouched.
func importHostLocal(t *txn, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	byOwner := map[alloc.Attachment][]netip.Addr{}
	var order []alloc.Attachment
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
		o := alloc.Attachment{ContainerID: strings.TrimSpace(id), IfName: strings.TrimSpace(ifname)}
		if o.ContainerID == "" {
			continue // host-local's empty files after a failed write
		}
		a = a.Unmap()
		if err := t.PutRecord(a, alloc.PodIPRecord{Holder: o}); err != nil {
			return err
		}
		if _, ok := byOwner[o]; !ok {
			order = append(order, o)
		}
		byOwner[o] = append(byOwner[o], a)
	}
	for _, o := range order {
		if err := t.PutHoldings(o, byOwner[o]); err != nil {
			return err
		}
	}
	return nil
}
