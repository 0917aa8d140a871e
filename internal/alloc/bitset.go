package alloc

import (
	"math/bits"

	"lukechampine.com/uint128"
)

// sparseSet is a set of 128-bit positions whose memory grows with the
// positions it holds, never with the universe: a map of 64-bit words in
// which an absent word is all clear. Above it sits a summary set of the same
// kind in which bit w is set when word w is full, so that skipping a run of
// taken positions costs one step per level instead of one per word. Levels
// are added until the top one spans at most topWords words, which are then
// scanned directly.
//
// For allocation this means: finding the next free position at or after any
// point is O(levels) in the common case, whatever the fill, and a set with n
// scattered positions costs about one map entry (~30-60 bytes) per position,
// while a dense one costs about one bit per position.
type sparseSet struct {
	words map[uint128.Uint128]uint64
	full  *sparseSet // summary of full words; nil at the top level
	// lastWord is the highest word index this level can hold.
	lastWord uint128.Uint128
}

const topWords = 64

// newSparseSet returns a set for positions 0..last.
func newSparseSet(last uint128.Uint128) *sparseSet {
	s := &sparseSet{words: map[uint128.Uint128]uint64{}, lastWord: last.Rsh(6)}
	if s.lastWord.Cmp64(topWords) >= 0 {
		s.full = newSparseSet(s.lastWord)
	}
	return s
}

func (s *sparseSet) test(i uint128.Uint128) bool {
	return s.words[i.Rsh(6)]&(1<<(i.Lo&63)) != 0
}

// set adds i and reports whether it was absent.
func (s *sparseSet) set(i uint128.Uint128) bool {
	w, bit := i.Rsh(6), uint64(1)<<(i.Lo&63)
	old := s.words[w]
	if old&bit != 0 {
		return false
	}
	s.words[w] = old | bit
	if old|bit == ^uint64(0) && s.full != nil {
		s.full.set(w)
	}
	return true
}

// clear removes i and reports whether it was present.
func (s *sparseSet) clear(i uint128.Uint128) bool {
	w, bit := i.Rsh(6), uint64(1)<<(i.Lo&63)
	old := s.words[w]
	if old&bit == 0 {
		return false
	}
	if old == ^uint64(0) && s.full != nil {
		s.full.clear(w)
	}
	if n := old &^ bit; n == 0 {
		delete(s.words, w)
	} else {
		s.words[w] = n
	}
	return true
}

// nextClear returns the smallest absent position in [from, last].
func (s *sparseSet) nextClear(from, last uint128.Uint128) (uint128.Uint128, bool) {
	if from.Cmp(last) > 0 {
		return uint128.Zero, false
	}
	w := from.Rsh(6)
	// Treat the positions below from in its word as taken.
	word := s.words[w] | (uint64(1)<<(from.Lo&63) - 1)
	if word != ^uint64(0) {
		return checkBound(w, word, last)
	}
	lastW := last.Rsh(6)
	if w.Equals(lastW) {
		return uint128.Zero, false
	}
	if s.full != nil {
		w2, ok := s.full.nextClear(w.Add64(1), lastW)
		if !ok {
			return uint128.Zero, false
		}
		return checkBound(w2, s.words[w2], last)
	}
	for w2 := w.Add64(1); w2.Cmp(lastW) <= 0; w2 = w2.Add64(1) {
		if word := s.words[w2]; word != ^uint64(0) {
			return checkBound(w2, word, last)
		}
	}
	return uint128.Zero, false
}

// checkBound returns the first clear bit of a word that is not full, if it
// is at most last.
func checkBound(w uint128.Uint128, word uint64, last uint128.Uint128) (uint128.Uint128, bool) {
	pos := w.Lsh(6).Add64(uint64(bits.TrailingZeros64(^word)))
	if pos.Cmp(last) > 0 {
		return uint128.Zero, false
	}
	return pos, true
}
