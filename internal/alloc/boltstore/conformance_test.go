package boltstore_test

import (
	"testing"
	"time"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/alloc/boltstore"
	"github.com/duet-net/duet/internal/alloc/podiptest"
)

// The pod-IP policy over the bbolt store passes the same conformance suite
// as over the in-memory store, with the store opened and closed around
// every call, as each duet-ipam invocation does.
func TestPodIPsOverBoltStore(t *testing.T) {
	podiptest.Run(t, func(t *testing.T) podiptest.Opener {
		dir := t.TempDir()
		return func(fn func(alloc.PodIPStore) error) error {
			st, err := boltstore.Open(dir, "pods", 30*time.Second)
			if err != nil {
				return err
			}
			defer st.Close()
			return fn(st)
		}
	}, podiptest.Options{ChurnSteps: 400, Seeds: 3})
}
