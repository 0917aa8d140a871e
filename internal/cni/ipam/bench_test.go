package ipam

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkAddDel is one ADD and one DEL as the plugin does them, store
// opened and closed for each, without the exec: the store's share of a
// call, at several fill levels of a dual-stack /16 + /64 node. It should
// not grow with the fill level.
func BenchmarkAddDel(b *testing.B) {
	ss := sets(b, `[[{"subnet":"10.128.0.0/16"}],[{"subnet":"fd00:10:128::/64"}]]`)
	for _, held := range []int{0, 1000, 10000} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			ts := newTestStore(b)
			ts.do(func(s *Store) {
				s.db.NoSync = true // filling only
				for i := 0; i < held; i++ {
					if _, err := s.Reserve(pod(i), ss, nil, t0, time.Minute); err != nil {
						b.Fatal(err)
					}
				}
			})
			now := t0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				now = now.Add(time.Millisecond)
				o := Owner{ContainerID: fmt.Sprintf("bench%d", i), IfName: "eth0"}
				ts.do(func(s *Store) {
					if _, err := s.Reserve(o, ss, nil, now, time.Minute); err != nil {
						b.Fatal(err)
					}
				})
				ts.do(func(s *Store) {
					if _, err := s.Release(o, now, time.Minute); err != nil {
						b.Fatal(err)
					}
				})
			}
		})
	}
}
