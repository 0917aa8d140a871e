package nft

import (
	"github.com/google/nftables"
)

// knownTypes are the set data types whose lengths and names the fake and
// the encoder look up by number: those of keys and values that
// addresses, protocols, ports and marks are made of.
var knownTypes = func() map[uint32]nftables.SetDatatype {
	m := map[uint32]nftables.SetDatatype{}
	for _, t := range []nftables.SetDatatype{
		nftables.TypeVerdict, nftables.TypeNFProto, nftables.TypeInteger, nftables.TypeIPAddr,
		nftables.TypeIP6Addr, nftables.TypeEtherAddr, nftables.TypeEtherType, nftables.TypeInetProto,
		nftables.TypeInetService, nftables.TypeMark, nftables.TypeIFIndex, nftables.TypeCTState,
		nftables.TypeICMPType, nftables.TypeICMP6Type, nftables.TypeFIBAddr,
	} {
		m[t.GetNFTMagic()] = t
	}
	return m
}()

// fieldsOfMagic splits a type number into the types it concatenates: each
// takes nftables.SetConcatTypeBits, the first the highest. A type it does
// not know ends the list empty.
func fieldsOfMagic(magic uint32) []nftables.SetDatatype {
	var fs []nftables.SetDatatype
	for ; magic != 0; magic >>= nftables.SetConcatTypeBits {
		t, ok := knownTypes[magic&nftables.SetConcatTypeMask]
		if !ok {
			return nil
		}
		fs = append([]nftables.SetDatatype{t}, fs...)
	}
	return fs
}
