package clusterranges

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"
)

// Source holds the current Snapshot. Load is lock-free, for every request
// that needs the ranges; Publish swaps in a new Snapshot and calls the
// subscribers, one publication at a time, so that each sees the changes
// in order.
type Source struct {
	cur atomic.Pointer[Snapshot]

	mu     sync.Mutex // serialises Publish and guards subs
	subs   map[int]func(*Snapshot)
	nextID int
}

// NewSource returns a Source holding initial.
func NewSource(initial *Snapshot) *Source {
	s := &Source{subs: map[int]func(*Snapshot){}}
	s.cur.Store(initial)
	return s
}

// Load returns the current Snapshot.
func (s *Source) Load() *Snapshot { return s.cur.Load() }

// Subscribe calls fn with every Snapshot published from now on, in the
// publisher's goroutine: fn should only note the change (enqueue a key,
// signal a channel) or do work that must precede the next change, and must
// not call Subscribe or the cancel function. The returned function ends
// the subscription.
func (s *Source) Subscribe(fn func(*Snapshot)) (cancel func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextID
	s.nextID++
	s.subs[id] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.subs, id)
	}
}

// Publish makes next the current Snapshot and tells the subscribers,
// unless it holds the same ranges as the current one. It reports whether
// it changed anything.
func (s *Source) Publish(next *Snapshot) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if next.Equal(s.cur.Load()) {
		return false
	}
	s.cur.Store(next)
	for _, id := range slices.Sorted(maps.Keys(s.subs)) {
		s.subs[id](next)
	}
	return true
}
