package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// backend is the kernel edge: the real one speaks netlink, the tests'
// fake keeps a table in memory.
type backend interface {
	// apply commits t as one transaction, all or nothing.
	apply(t *tx) error
	// observe lists the table: what a repair compares with the model.
	observe() (*observed, error)
	// listElems lists one set's elements (a dynamic one, whose elements
	// observe leaves out).
	listElems(set string) (map[string]elemVal, error)
	// deleteFlows deletes the conntrack entries of UDP flows.
	deleteFlows(flows map[flow]bool) error
	deleteTable() error
	close() error
}

// elemsPerMessage keeps a message's element list well below the 64 KiB a
// netlink attribute can hold: the largest element (an IPv6 endpoint
// member key and its attributes) is under 128 bytes.
const elemsPerMessage = 256

// kernel programs the table over netlink.
type kernel struct {
	fam    Family
	nsPath string
	conn   *nlConn
}

func newKernel(fam Family, nsPath string) (*kernel, error) {
	c, err := openNetlink(nsPath)
	if err != nil {
		return nil, err
	}
	return &kernel{fam: fam, nsPath: nsPath, conn: c}, nil
}

func (k *kernel) deleteFlows(flows map[flow]bool) error {
	_, err := deleteFlows(k.nsPath, k.fam, flows)
	return err
}

func (k *kernel) close() error { return k.conn.close() }

func (k *kernel) table() *nftables.Table {
	l := layout{fam: k.fam}
	return &nftables.Table{Name: TableName, Family: l.tableFamily()}
}

// apply builds the batch's messages with google/nftables (recording them
// instead of sending them) and sends them on Duet's own socket.
func (k *kernel) apply(t *tx) error {
	msgs, what, err := k.messages(t)
	if err != nil {
		return err
	}
	return k.conn.sendBatch(msgs, what)
}

// record returns the messages build adds to a google/nftables Conn,
// without batch delimiters: the Conn "sends" to a recorder that acks
// everything.
func record(build func(c *nftables.Conn) error) ([]netlink.Message, error) {
	var recorded []netlink.Message
	ack := []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}}
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		recorded = append(recorded, req...)
		return ack, nil
	}))
	if err != nil {
		return nil, err
	}
	if err := build(c); err != nil {
		return nil, err
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("building the nftables batch: %w", err)
	}
	if len(recorded) < 2 {
		return nil, nil
	}
	return recorded[1 : len(recorded)-1], nil
}

func (k *kernel) messages(t *tx) ([]netlink.Message, []string, error) {
	var what []string
	msgs, err := record(func(c *nftables.Conn) error { return k.build(c, t, &what) })
	if err != nil {
		return nil, nil, err
	}
	if len(msgs) != len(what) {
		return nil, nil, fmt.Errorf("internal error: %d nftables messages for %d steps", len(msgs), len(what))
	}
	return msgs, what, nil
}

// elems adds one message per set and per elemsPerMessage elements.
func (k *kernel) elems(c *nftables.Conn, elems []elemObj, what *[]string, verb string, op func(*nftables.Set, []nftables.SetElement) error) error {
	for i := 0; i < len(elems); {
		set := elems[i].set
		var batch []nftables.SetElement
		for ; i < len(elems) && elems[i].set == set && len(batch) < elemsPerMessage; i++ {
			e := elems[i]
			el := nftables.SetElement{Key: []byte(e.key)}
			switch {
			case e.val.goTo != "":
				el.VerdictData = &expr.Verdict{Kind: expr.VerdictGoto, Chain: e.val.goTo}
			case e.val.data != "":
				el.Val = []byte(e.val.data)
			}
			batch = append(batch, el)
		}
		if err := op(&nftables.Set{Table: k.table(), Name: set, ID: 1}, batch); err != nil {
			return err
		}
		*what = append(*what, fmt.Sprintf("%s %d elements of %s", verb, len(batch), set))
	}
	return nil
}

// build adds t's operations to c in the order tx documents, noting in
// what what each message does.
func (k *kernel) build(c *nftables.Conn, t *tx, what *[]string) error {
	table := k.table()
	// Every call below adds exactly one message.
	step := func(format string, args ...any) { *what = append(*what, fmt.Sprintf(format, args...)) }

	if t.addTable {
		c.AddTable(table)
		step("adding table %s", TableName)
	}
	// Deletions carry keys only.
	del := make([]elemObj, len(t.delElems))
	for i, e := range t.delElems {
		del[i] = elemObj{set: e.set, key: e.key}
	}
	if err := k.elems(c, del, what, "deleting", c.SetDeleteElements); err != nil {
		return err
	}
	for _, name := range t.flushes {
		c.FlushChain(&nftables.Chain{Table: table, Name: name})
		step("flushing chain %s", name)
	}
	for _, name := range t.delChains {
		c.DelChain(&nftables.Chain{Table: table, Name: name})
		step("deleting chain %s", name)
	}
	for _, name := range t.delSets {
		c.DelSet(&nftables.Set{Table: table, Name: name})
		step("deleting set %s", name)
	}
	for i, s := range t.addSets {
		sp := s.spec
		set := &nftables.Set{
			Table: table, Name: s.name, ID: uint32(i + 1),
			IsMap: sp.flags&flagMap != 0, Concatenation: sp.flags&flagConcat != 0,
			HasTimeout: sp.flags&flagTimeout != 0, Dynamic: sp.flags&flagDynamic != 0,
			Timeout: sp.timeout, KeyType: sp.keyType, DataType: sp.dataType, Size: sp.size,
		}
		if err := c.AddSet(set, nil); err != nil {
			return fmt.Errorf("set %s: %w", s.name, err)
		}
		step("adding set %s", s.name)
	}
	for _, ch := range t.addChains {
		nc := &nftables.Chain{Table: table, Name: ch.name}
		if ch.hook != nil {
			num, prio := ch.hook.num, ch.hook.prio
			nc.Type, nc.Hooknum, nc.Priority = ch.hook.typ, &num, &prio
		}
		c.AddChain(nc)
		step("adding chain %s", ch.name)
	}
	for _, ch := range t.rules {
		nc := &nftables.Chain{Table: table, Name: ch.name}
		for _, r := range ch.rules {
			if r.exprs == nil {
				return fmt.Errorf("internal error: rule %q of chain %s has no expressions", r.text, ch.name)
			}
			c.AddRule(&nftables.Rule{Table: table, Chain: nc, Exprs: r.exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, r.fingerprint())})
			step("adding rule %q to chain %s", r.text, ch.name)
		}
	}
	return k.elems(c, t.addElems, what, "adding", c.SetAddElements)
}

func (k *kernel) deleteTable() error {
	msgs, err := record(func(c *nftables.Conn) error { c.DelTable(k.table()); return nil })
	if err != nil {
		return err
	}
	err = k.conn.sendBatch(msgs, []string{"deleting table " + TableName})
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// observe lists the table with one dump per kind of object (and one per
// set whose elements the proxier owns).
func (k *kernel) observe() (*observed, error) {
	fam := uint8(k.table().Family)
	o := &observed{chains: map[string]*observedChain{}, sets: map[string]setSpec{}, elems: map[string]map[string]elemVal{}}
	name := []byte(TableName + "\x00")
	_, err := k.conn.get(unix.NFT_MSG_GETTABLE, fam, []netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: name}})
	if errors.Is(err, unix.ENOENT) {
		return o, nil
	}
	if err != nil {
		return nil, fmt.Errorf("looking up table %s: %w", TableName, err)
	}
	o.table = true

	msgs, err := k.conn.dump(unix.NFT_MSG_GETCHAIN, fam, []netlink.Attribute{{Type: unix.NFTA_CHAIN_TABLE, Data: name}})
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	for _, m := range msgs {
		table, chain, h, err := parseChain(m.Data[4:])
		if err != nil {
			return nil, err
		}
		if table == TableName {
			o.chains[chain] = &observedChain{hook: h}
		}
	}

	msgs, err = k.conn.dump(unix.NFT_MSG_GETRULE, fam, []netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: name}})
	if err != nil {
		return nil, fmt.Errorf("listing rules: %w", err)
	}
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		var table, chain, comment string
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_TABLE:
				table = ad.String()
			case unix.NFTA_RULE_CHAIN:
				chain = ad.String()
			case unix.NFTA_RULE_USERDATA:
				comment, _ = userdata.GetString(ad.Bytes(), userdata.TypeComment)
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decoding a rule: %w", err)
		}
		if c := o.chains[chain]; c != nil && table == TableName {
			c.rules = append(c.rules, comment)
		}
	}

	msgs, err = k.conn.dump(unix.NFT_MSG_GETSET, fam, []netlink.Attribute{{Type: unix.NFTA_SET_TABLE, Data: name}})
	if err != nil {
		return nil, fmt.Errorf("listing sets: %w", err)
	}
	for _, m := range msgs {
		table, set, spec, err := parseSet(m.Data[4:])
		if err != nil {
			return nil, err
		}
		if table == TableName {
			o.sets[set] = spec
		}
	}
	for set, spec := range o.sets {
		if spec.dynamic() {
			continue
		}
		elems, err := k.listElems(set)
		if err != nil {
			return nil, err
		}
		o.elems[set] = elems
	}
	return o, nil
}

func (k *kernel) listElems(set string) (map[string]elemVal, error) {
	msgs, err := k.conn.dump(unix.NFT_MSG_GETSETELEM, uint8(k.table().Family), []netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(set + "\x00")},
	})
	if err != nil {
		return nil, fmt.Errorf("listing elements of %s: %w", set, err)
	}
	elems := map[string]elemVal{}
	for _, m := range msgs {
		if err := parseElems(m.Data[4:], elems); err != nil {
			return nil, fmt.Errorf("elements of %s: %w", set, err)
		}
	}
	return elems, nil
}

func parseChain(b []byte) (table, chain string, h *hook, err error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "", "", nil, err
	}
	ad.ByteOrder = binary.BigEndian
	var typ string
	var num, prio uint32
	var base bool
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_CHAIN_TABLE:
			table = ad.String()
		case unix.NFTA_CHAIN_NAME:
			chain = ad.String()
		case unix.NFTA_CHAIN_TYPE:
			typ = ad.String()
		case unix.NFTA_CHAIN_HOOK:
			base = true
			ad.Nested(func(nd *netlink.AttributeDecoder) error {
				for nd.Next() {
					switch nd.Type() {
					case unix.NFTA_HOOK_HOOKNUM:
						num = nd.Uint32()
					case unix.NFTA_HOOK_PRIORITY:
						prio = nd.Uint32()
					}
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return "", "", nil, fmt.Errorf("decoding a chain: %w", err)
	}
	if base {
		h = &hook{typ: nftables.ChainType(typ), num: nftables.ChainHook(num), prio: nftables.ChainPriority(int32(prio))}
	}
	return table, chain, h, nil
}

func parseSet(b []byte) (table, set string, spec setSpec, err error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "", "", spec, err
	}
	ad.ByteOrder = binary.BigEndian
	var keyType, keyLen, dataType, dataLen uint32
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_TABLE:
			table = ad.String()
		case unix.NFTA_SET_NAME:
			set = ad.String()
		case unix.NFTA_SET_FLAGS:
			spec.flags = ad.Uint32()
		case unix.NFTA_SET_KEY_TYPE:
			keyType = ad.Uint32()
		case unix.NFTA_SET_KEY_LEN:
			keyLen = ad.Uint32()
		case unix.NFTA_SET_DATA_TYPE:
			dataType = ad.Uint32()
		case unix.NFTA_SET_DATA_LEN:
			dataLen = ad.Uint32()
		case unix.NFTA_SET_TIMEOUT:
			spec.timeout = time.Duration(ad.Uint64()) * time.Millisecond
		case unix.NFTA_SET_DESC:
			ad.Nested(func(nd *netlink.AttributeDecoder) error {
				for nd.Next() {
					if nd.Type() == unix.NFTA_SET_DESC_SIZE {
						spec.size = nd.Uint32()
					}
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return "", "", spec, fmt.Errorf("decoding a set: %w", err)
	}
	spec.keyType = nftables.SetDatatype{Bytes: keyLen}
	spec.keyType.SetNFTMagic(keyType)
	if spec.flags&flagMap != 0 {
		if dataType == unix.NFT_DATA_VERDICT {
			// Sent as nft's verdict type; the kernel keeps its own.
			spec.dataType = nftables.TypeVerdict
		} else {
			spec.dataType = nftables.SetDatatype{Bytes: dataLen}
			spec.dataType.SetNFTMagic(dataType)
		}
	}
	return table, set, spec, nil
}

func parseElems(b []byte, into map[string]elemVal) error {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for list.Next() {
				var key string
				var val elemVal
				list.Nested(func(el *netlink.AttributeDecoder) error {
					for el.Next() {
						switch el.Type() {
						case unix.NFTA_SET_ELEM_KEY:
							el.Nested(func(d *netlink.AttributeDecoder) error {
								for d.Next() {
									if d.Type() == unix.NFTA_DATA_VALUE {
										key = string(d.Bytes())
									}
								}
								return nil
							})
						case unix.NFTA_SET_ELEM_DATA:
							el.Nested(func(d *netlink.AttributeDecoder) error {
								for d.Next() {
									switch d.Type() {
									case unix.NFTA_DATA_VALUE:
										val.data = string(d.Bytes())
									case unix.NFTA_DATA_VERDICT:
										val.goTo = parseVerdict(d)
									}
								}
								return nil
							})
						}
					}
					return nil
				})
				into[key] = val
			}
			return nil
		})
	}
	return ad.Err()
}

// parseVerdict reads a goto's chain; any other verdict reads as one no
// element of Duet's wants, so that a repair replaces it.
func parseVerdict(d *netlink.AttributeDecoder) string {
	var code uint32
	var chain string
	d.Nested(func(v *netlink.AttributeDecoder) error {
		v.ByteOrder = binary.BigEndian
		for v.Next() {
			switch v.Type() {
			case unix.NFTA_VERDICT_CODE:
				code = v.Uint32()
			case unix.NFTA_VERDICT_CHAIN:
				chain = v.String()
			}
		}
		return nil
	})
	if int32(code) == unix.NFT_GOTO {
		return chain
	}
	return fmt.Sprintf("(verdict %d %s)", int32(code), chain)
}
