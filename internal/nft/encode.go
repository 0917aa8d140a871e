package nft

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The batch is encoded straight into one buffer: netlink headers,
// nfgenmsg headers and attributes as the kernel's UAPI lays them out
// (linux/netfilter/nf_tables.h). Rule expressions are google/nftables'
// encoding. Netlink's own fields are in host order, nftables' values in
// network order.

const (
	nlmsgHdrLen = 16
	nlaHdrLen   = 4
	nlaNested   = unix.NLA_F_NESTED
	// maxAttr is the most an attribute can hold: its length is 16 bits.
	// A set element list is split over several messages well before.
	maxAttr = 0xffff
	// maxElemList is where an element list is cut into another message.
	maxElemList = 60 << 10
)

const nftMsg = unix.NFNL_SUBSYS_NFTABLES << 8

// Kernel constants x/sys/unix does not name, or names as a type that does
// not fit the wire.
const (
	nftaSetDescConcat = 2 // NFTA_SET_DESC_CONCAT
	nftaSetFieldLen   = 1 // NFTA_SET_FIELD_LEN
)

// verdictGoto is NFT_GOTO (-4) as the 32-bit field the kernel reads.
const verdictGoto = uint32(1<<32 + unix.NFT_GOTO)

// encoder appends netlink messages and attributes to b.
type encoder struct {
	b   []byte
	msg int // offset of the message being written
}

func nlAlign(n int) int { return (n + 3) &^ 3 }

// begin starts a message of the given type, flags and sequence number,
// with its nfgenmsg header.
func (e *encoder) begin(typ uint16, flags uint16, seq uint32, family uint8, resID uint16) {
	e.msg = len(e.b)
	e.b = binary.NativeEndian.AppendUint32(e.b, 0) // length, set by end
	e.b = binary.NativeEndian.AppendUint16(e.b, typ)
	e.b = binary.NativeEndian.AppendUint16(e.b, flags)
	e.b = binary.NativeEndian.AppendUint32(e.b, seq)
	e.b = binary.NativeEndian.AppendUint32(e.b, 0) // port ID: the kernel's
	e.b = append(e.b, family, unix.NFNETLINK_V0, byte(resID>>8), byte(resID))
}

func (e *encoder) end() {
	binary.NativeEndian.PutUint32(e.b[e.msg:], uint32(len(e.b)-e.msg))
}

func (e *encoder) attr(typ uint16, data []byte) {
	n := nlaHdrLen + len(data)
	e.b = binary.NativeEndian.AppendUint16(e.b, uint16(n))
	e.b = binary.NativeEndian.AppendUint16(e.b, typ)
	e.b = append(e.b, data...)
	e.pad()
}

func (e *encoder) pad() {
	for len(e.b)%4 != 0 {
		e.b = append(e.b, 0)
	}
}

func (e *encoder) str(typ uint16, s string) {
	n := nlaHdrLen + len(s) + 1
	e.b = binary.NativeEndian.AppendUint16(e.b, uint16(n))
	e.b = binary.NativeEndian.AppendUint16(e.b, typ)
	e.b = append(e.b, s...)
	e.b = append(e.b, 0)
	e.pad()
}

func (e *encoder) u32(typ uint16, v uint32) {
	e.b = binary.NativeEndian.AppendUint16(e.b, nlaHdrLen+4)
	e.b = binary.NativeEndian.AppendUint16(e.b, typ)
	e.b = binary.BigEndian.AppendUint32(e.b, v)
}

func (e *encoder) u64(typ uint16, v uint64) {
	e.b = binary.NativeEndian.AppendUint16(e.b, nlaHdrLen+8)
	e.b = binary.NativeEndian.AppendUint16(e.b, typ)
	e.b = binary.BigEndian.AppendUint64(e.b, v)
}

// nest starts a nested attribute; close it with unnest.
func (e *encoder) nest(typ uint16) int {
	off := len(e.b)
	e.b = binary.NativeEndian.AppendUint16(e.b, 0)
	e.b = binary.NativeEndian.AppendUint16(e.b, typ|nlaNested)
	return off
}

// unnest sets a nested attribute's length, which must fit its 16 bits.
func (e *encoder) unnest(off int) error {
	n := len(e.b) - off
	if n > maxAttr {
		return fmt.Errorf("a %d-byte netlink attribute is over the %d bytes one can hold", n, maxAttr)
	}
	binary.NativeEndian.PutUint16(e.b[off:], uint16(n))
	return nil
}

// msgRef ties a message of a batch to the operation (and the elements of
// it) it carries, for errors.
type msgRef struct {
	op       int
	from, to int // elements
}

// batch is an encoded transaction.
type batch struct {
	encoder
	seq   uint32   // the last sequence number used
	first uint32   // the first operation message's
	refs  []msgRef // by sequence number, from first
	last  int      // offset of the last operation message
	setID uint32
}

// encodeBatch encodes tx's operations between batch delimiters, numbering
// messages from seq+1. The last operation message asks for an ack: an
// error is reported for every message that fails, and success only once.
func encodeBatch(tx *Transaction, seq uint32) (*batch, error) {
	b := &batch{seq: seq}
	b.seq++
	b.begin(unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, b.seq, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)
	b.end()
	b.first = b.seq + 1
	for i := range tx.ops {
		if err := b.op(i, &tx.ops[i]); err != nil {
			return nil, fmt.Errorf("%s: %w", tx.ops[i].describe(), err)
		}
	}
	if len(b.refs) == 0 {
		return b, nil
	}
	flags := binary.NativeEndian.Uint16(b.b[b.last+6:])
	binary.NativeEndian.PutUint16(b.b[b.last+6:], flags|unix.NLM_F_ACK)
	b.seq++
	b.begin(unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, b.seq, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)
	b.end()
	return b, nil
}

// message starts the next operation message.
func (b *batch) message(typ uint16, flags uint16, fam Family, ref msgRef) {
	b.seq++
	b.last = len(b.b)
	b.begin(nftMsg|typ, unix.NLM_F_REQUEST|flags, b.seq, uint8(fam.TableFamily()), 0)
	b.refs = append(b.refs, ref)
}

func (b *batch) op(i int, o *op) error {
	ref := msgRef{op: i}
	fam, table := o.table.Family, o.table.Name
	switch o.kind {
	case opAddTable:
		b.message(unix.NFT_MSG_NEWTABLE, unix.NLM_F_CREATE, fam, ref)
		b.str(unix.NFTA_TABLE_NAME, table)
		b.u32(unix.NFTA_TABLE_FLAGS, 0)
	case opDeleteTable:
		b.message(unix.NFT_MSG_DELTABLE, 0, fam, ref)
		b.str(unix.NFTA_TABLE_NAME, table)
	case opAddChain:
		b.message(unix.NFT_MSG_NEWCHAIN, unix.NLM_F_CREATE, fam, ref)
		b.str(unix.NFTA_CHAIN_TABLE, table)
		b.str(unix.NFTA_CHAIN_NAME, o.name)
		if h := o.hook; h != nil {
			n := b.nest(unix.NFTA_CHAIN_HOOK)
			b.u32(unix.NFTA_HOOK_HOOKNUM, uint32(h.Num))
			b.u32(unix.NFTA_HOOK_PRIORITY, uint32(h.Priority))
			if err := b.unnest(n); err != nil {
				return err
			}
			if h.Drop {
				b.u32(unix.NFTA_CHAIN_POLICY, uint32(nftables.ChainPolicyDrop))
			}
			b.str(unix.NFTA_CHAIN_TYPE, string(h.Type))
		}
	case opFlushChain:
		b.message(unix.NFT_MSG_DELRULE, 0, fam, ref)
		b.str(unix.NFTA_RULE_TABLE, table)
		b.str(unix.NFTA_RULE_CHAIN, o.name)
	case opDeleteChain:
		b.message(unix.NFT_MSG_DELCHAIN, 0, fam, ref)
		b.str(unix.NFTA_CHAIN_TABLE, table)
		b.str(unix.NFTA_CHAIN_NAME, o.name)
	case opAddSet:
		b.message(unix.NFT_MSG_NEWSET, unix.NLM_F_CREATE, fam, ref)
		return b.set(table, o.set)
	case opDeleteSet:
		b.message(unix.NFT_MSG_DELSET, 0, fam, ref)
		b.str(unix.NFTA_SET_TABLE, table)
		b.str(unix.NFTA_SET_NAME, o.name)
	case opAddRule:
		b.message(unix.NFT_MSG_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_APPEND, fam, ref)
		b.str(unix.NFTA_RULE_TABLE, table)
		b.str(unix.NFTA_RULE_CHAIN, o.name)
		n := b.nest(unix.NFTA_RULE_EXPRESSIONS)
		for _, x := range o.rule.Exprs {
			data, err := expr.Marshal(byte(fam.TableFamily()), x)
			if err != nil {
				return fmt.Errorf("encoding %T: %w", x, err)
			}
			b.attr(unix.NFTA_LIST_ELEM|nlaNested, data)
		}
		if err := b.unnest(n); err != nil {
			return err
		}
		b.attr(unix.NFTA_RULE_USERDATA, userdata.AppendString(nil, userdata.TypeComment, o.rule.Fingerprint()))
	case opAddElements, opDeleteElements:
		return b.elements(i, o)
	default:
		return fmt.Errorf("unknown operation %d", o.kind)
	}
	b.end()
	return nil
}

func (b *batch) set(table string, s *Set) error {
	b.str(unix.NFTA_SET_TABLE, table)
	b.str(unix.NFTA_SET_NAME, s.Name)
	b.u32(unix.NFTA_SET_FLAGS, uint32(s.Flags))
	b.u32(unix.NFTA_SET_KEY_TYPE, s.KeyType.GetNFTMagic())
	b.u32(unix.NFTA_SET_KEY_LEN, s.KeyType.Bytes)
	b.setID++
	b.u32(unix.NFTA_SET_ID, b.setID)
	if s.Flags&SetMap != 0 {
		typ := s.DataType.GetNFTMagic()
		if typ == nftables.TypeVerdict.GetNFTMagic() {
			typ = unix.NFT_DATA_VERDICT // the kernel's number for verdict data
		}
		b.u32(unix.NFTA_SET_DATA_TYPE, typ)
		b.u32(unix.NFTA_SET_DATA_LEN, s.DataType.Bytes)
	}
	if s.Timeout > 0 {
		b.u64(unix.NFTA_SET_TIMEOUT, uint64(s.Timeout.Milliseconds()))
	}
	if s.Size > 0 || s.Flags&SetConcat != 0 {
		d := b.nest(unix.NFTA_SET_DESC)
		if s.Size > 0 {
			b.u32(unix.NFTA_SET_DESC_SIZE, s.Size)
		}
		if s.Flags&SetConcat != 0 {
			// The length of each field: nft needs them to list the set.
			c := b.nest(nftaSetDescConcat)
			for _, f := range fieldsOfMagic(s.KeyType.GetNFTMagic()) {
				l := b.nest(unix.NFTA_LIST_ELEM)
				b.u32(nftaSetFieldLen, f.Bytes)
				if err := b.unnest(l); err != nil {
					return err
				}
			}
			if err := b.unnest(c); err != nil {
				return err
			}
		}
		if err := b.unnest(d); err != nil {
			return err
		}
	}
	if s.Flags&SetInterval != 0 {
		// As nft writes it: the key is in network order, which nft uses
		// to print ranges.
		b.attr(unix.NFTA_SET_USERDATA, userdata.AppendUint32(nil, userdata.NFTNL_UDATA_SET_KEYBYTEORDER, 2))
	}
	b.end()
	return nil
}

// elements encodes an element operation in as many messages as its list
// needs: an attribute holds at most 64 KiB. They are one transaction
// still.
func (b *batch) elements(i int, o *op) error {
	typ, flags := uint16(unix.NFT_MSG_NEWSETELEM), uint16(unix.NLM_F_CREATE)
	if o.kind == opDeleteElements {
		typ, flags = unix.NFT_MSG_DELSETELEM, 0
	}
	for from := 0; from < len(o.elems); {
		b.message(typ, flags, o.table.Family, msgRef{op: i, from: from})
		b.str(unix.NFTA_SET_ELEM_LIST_TABLE, o.table.Name)
		b.str(unix.NFTA_SET_ELEM_LIST_SET, o.name)
		list := b.nest(unix.NFTA_SET_ELEM_LIST_ELEMENTS)
		n := from
		for ; n < len(o.elems); n++ {
			mark := len(b.b)
			b.element(&o.elems[n], o.kind == opAddElements)
			if len(b.b)-list > maxElemList && n > from {
				b.b = b.b[:mark]
				break
			}
		}
		if err := b.unnest(list); err != nil {
			return err
		}
		b.end()
		b.refs[len(b.refs)-1].to = n
		from = n
	}
	return nil
}

func (b *batch) element(e *Element, withData bool) {
	el := b.nest(unix.NFTA_LIST_ELEM)
	if e.IntervalEnd {
		b.u32(unix.NFTA_SET_ELEM_FLAGS, unix.NFT_SET_ELEM_INTERVAL_END)
	}
	k := b.nest(unix.NFTA_SET_ELEM_KEY)
	b.str0(unix.NFTA_DATA_VALUE, e.Key)
	_ = b.unnest(k)
	if withData {
		switch {
		case e.Goto != "":
			d := b.nest(unix.NFTA_SET_ELEM_DATA)
			v := b.nest(unix.NFTA_DATA_VERDICT)
			b.u32(unix.NFTA_VERDICT_CODE, verdictGoto)
			b.str(unix.NFTA_VERDICT_CHAIN, e.Goto)
			_ = b.unnest(v)
			_ = b.unnest(d)
		case e.Data != "":
			d := b.nest(unix.NFTA_SET_ELEM_DATA)
			b.str0(unix.NFTA_DATA_VALUE, e.Data)
			_ = b.unnest(d)
		}
	}
	_ = b.unnest(el)
}

// str0 is an attribute of the bytes of s, without a NUL.
func (e *encoder) str0(typ uint16, s string) {
	n := nlaHdrLen + len(s)
	e.b = binary.NativeEndian.AppendUint16(e.b, uint16(n))
	e.b = binary.NativeEndian.AppendUint16(e.b, typ)
	e.b = append(e.b, s...)
	e.pad()
}
