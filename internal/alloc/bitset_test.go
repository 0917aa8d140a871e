package alloc

import (
	"math/rand/v2"
	"testing"

	"lukechampine.com/uint128"
)

// modelNextClear is the obviously correct nextClear over a plain map.
func modelNextClear(m map[uint128.Uint128]bool, from, last uint128.Uint128) (uint128.Uint128, bool) {
	for i := from; i.Cmp(last) <= 0; i = i.Add64(1) {
		if !m[i] {
			return i, true
		}
		if i.Equals(last) {
			break
		}
	}
	return uint128.Zero, false
}

// TestSparseSetMatchesModel drives random set/clear/nextClear sequences,
// clustered so that words fill up and summary levels come into play, and
// compares every answer with the model.
func TestSparseSetMatchesModel(t *testing.T) {
	for _, universe := range []uint64{1, 63, 64, 65, 4095, 4096, 70000, 300000} {
		rnd := rand.New(rand.NewPCG(universe, 7))
		last := uint128.From64(universe - 1)
		s := newSparseSet(last)
		m := map[uint128.Uint128]bool{}
		for op := 0; op < 20000; op++ {
			// Keep operations within a window so that runs become full.
			i := uint128.From64(rnd.Uint64N(min(universe, 5000)))
			switch rnd.IntN(5) {
			case 0, 1, 2:
				if got, want := s.set(i), !m[i]; got != want {
					t.Fatalf("universe %d: set(%s) = %v, want %v", universe, i, got, want)
				}
				m[i] = true
			case 3:
				if got, want := s.clear(i), m[i]; got != want {
					t.Fatalf("universe %d: clear(%s) = %v, want %v", universe, i, got, want)
				}
				delete(m, i)
			case 4:
				lim := i.Add64(rnd.Uint64N(universe))
				if lim.Cmp(last) > 0 {
					lim = last
				}
				got, gok := s.nextClear(i, lim)
				want, wok := modelNextClear(m, i, lim)
				if gok != wok || (gok && !got.Equals(want)) {
					t.Fatalf("universe %d: nextClear(%s, %s) = %s %v, want %s %v", universe, i, lim, got, gok, want, wok)
				}
			}
			if got := s.test(i); got != m[i] {
				t.Fatalf("universe %d: test(%s) = %v, want %v", universe, i, got, m[i])
			}
		}
	}
}

// A full 128-bit universe works at both ends, including the very last
// position, where an overflowing implementation would wrap.
func TestSparseSetFull128BitUniverse(t *testing.T) {
	s := newSparseSet(uint128.Max)
	top := uint128.Max
	for i := 0; i < 64; i++ {
		s.set(top.Sub64(uint64(i)))
	}
	if _, ok := s.nextClear(top.Sub64(63), top); ok {
		t.Fatal("found a clear position among the top 64, all set")
	}
	got, ok := s.nextClear(top.Sub64(200), top)
	if !ok || !got.Equals(top.Sub64(200)) {
		t.Fatalf("nextClear below the top run = %s %v", got, ok)
	}
	// Skipping a long run of full words uses the summaries.
	base := uint128.New(0, 1<<40)
	for i := uint64(0); i < 64*64*3; i++ {
		s.set(base.Add64(i))
	}
	got, ok = s.nextClear(base, top)
	if want := base.Add64(64 * 64 * 3); !ok || !got.Equals(want) {
		t.Fatalf("nextClear after a run = %s %v, want %s", got, ok, want)
	}
	if len(s.words) > 64*3+1+64 {
		t.Fatalf("level 0 holds %d words for %d positions", len(s.words), 64*64*3+64)
	}
}
