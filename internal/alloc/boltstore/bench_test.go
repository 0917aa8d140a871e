package boltstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/alloc/podiptest"
)

// BenchmarkAddDel is one ADD and one DEL as duet-ipam does them, store
// opened and closed for each, without the exec: the store's share of a
// call, at several fill levels of a dual-stack /16 + /64 node. It should
// not grow with the fill level.
func BenchmarkAddDel(b *testing.B) {
	ss := podiptest.Sets(b, "10.128.0.0/16", "fd00:10:128::/64")
	for _, held := range []int{0, 1000, 10000} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			dir := b.TempDir()
			call := func(now time.Time, noSync bool, fn func(p *alloc.PodIPs) error) {
				s, err := Open(dir, "pods", 5*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				s.db.NoSync = noSync
				p, err := alloc.NewPodIPs(s, ss, alloc.PodIPOptions{Cooldown: time.Minute, Now: func() time.Time { return now }})
				if err != nil {
					b.Fatal(err)
				}
				if err := fn(p); err != nil {
					b.Fatal(err)
				}
			}
			call(podiptest.T0, true, func(p *alloc.PodIPs) error { // filling only: no fsync
				for i := 0; i < held; i++ {
					if _, err := p.Reserve(podiptest.Pod(i), nil); err != nil {
						return err
					}
				}
				return nil
			})
			now := podiptest.T0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				now = now.Add(time.Millisecond)
				o := alloc.Attachment{ContainerID: fmt.Sprintf("bench%d", i), IfName: "eth0"}
				call(now, false, func(p *alloc.PodIPs) error { _, err := p.Reserve(o, nil); return err })
				call(now, false, func(p *alloc.PodIPs) error { _, err := p.Release(o); return err })
			}
		})
	}
}
