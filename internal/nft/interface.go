// Package nft is Duet's one nftables layer: the service proxy and the
// egress masquerading program their tables through it.
//
// A change is data: a Transaction is built up in memory and run as one
// netlink batch, which the kernel applies all or nothing. Conn is the
// kernel's side: it encodes a transaction's messages itself and sends the
// whole batch in one sendmsg, asking for an acknowledgement of its last
// message only, so that a batch of a hundred thousand elements costs one
// system call and no per-message round trip (google/nftables' Conn reads
// an ack per message and overflows its receive buffer at that size).
// Listing reads back what a table holds: chains with their hooks and
// their rules' fingerprints, sets' definitions, and elements.
//
// Fake is the same Interface in memory, with the kernel's rules for what
// a transaction may do, for any package's tests.
package nft

// Interface is what programs tables: the kernel (Conn) or a Fake.
type Interface interface {
	// Run commits tx as one transaction: all of it, or, with an error,
	// none of it.
	Run(tx *Transaction) error
	// List reads table t: its chains and sets, without their elements.
	// It returns nil, and no error, when there is no such table.
	List(t Table) (*Listing, error)
	// ListElements calls each with every element of set in table t.
	ListElements(t Table, set string, each func(Element)) error
	// Close releases the connection; the tables stay as they are.
	Close() error
}

// Listing is a table as the kernel reports it, elements aside.
type Listing struct {
	Chains map[string]ListedChain
	Sets   map[string]Set
}

// ListedChain is a chain as listed.
type ListedChain struct {
	Hook *Hook // nil for a regular chain
	// Rules are the rules' fingerprints (see Rule.Fingerprint), in order;
	// "" for a rule that has none.
	Rules []string
}
