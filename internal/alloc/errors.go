package alloc

import (
	"errors"
	"fmt"
)

// The sentinel errors callers test with errors.Is. Their text is
// Kubernetes' where Kubernetes has one, so that API errors read the same.
var (
	ErrFull       = errors.New("range is full")
	ErrAllocated  = errors.New("provided IP is already allocated")
	ErrNotInRange = errors.New("not in the valid range")
	ErrReserved   = errors.New("reserved")
)

// AllocatedError says that an address or prefix has an owner already.
type AllocatedError struct{ What string }

func (e *AllocatedError) Error() string {
	return fmt.Sprintf("%s is already allocated", e.What)
}
func (e *AllocatedError) Is(target error) bool { return target == ErrAllocated }

// NotInRangeError is Kubernetes' ErrNotInRange: the request names something
// the range can never hand out.
type NotInRangeError struct {
	What       string // "IP" or "CIDR"
	Value      string
	ValidRange string
	Reason     string // optional detail, e.g. "it is the network address"
}

func (e *NotInRangeError) Error() string {
	msg := fmt.Sprintf("the provided %s (%s) is not in the valid range. The range of valid %ss is %s", e.What, e.Value, e.What, e.ValidRange)
	if e.Reason != "" {
		msg += " (" + e.Reason + ")"
	}
	return msg
}
func (e *NotInRangeError) Is(target error) bool { return target == ErrNotInRange }

// ReservedError says that an address is set aside for a fixed purpose (the
// kubernetes Service, a node's gateway) and cannot be requested.
type ReservedError struct{ Value, For string }

func (e *ReservedError) Error() string {
	return fmt.Sprintf("the provided IP (%s) is reserved for %s", e.Value, e.For)
}
func (e *ReservedError) Is(target error) bool { return target == ErrReserved }

// FullError names the exhausted range.
type FullError struct{ Msg string }

func (e *FullError) Error() string        { return e.Msg }
func (e *FullError) Is(target error) bool { return target == ErrFull }

// ErrUnknownAttachment says that an attachment holds no pod addresses.
var ErrUnknownAttachment = errors.New("unknown attachment")

// UnknownAttachmentError names the attachment that holds no addresses.
type UnknownAttachmentError struct{ Attachment Attachment }

func (e *UnknownAttachmentError) Error() string {
	return fmt.Sprintf("no addresses are reserved for container %s interface %s", e.Attachment.ContainerID, e.Attachment.IfName)
}
func (e *UnknownAttachmentError) Is(target error) bool { return target == ErrUnknownAttachment }

// StoreError is a failure of the store under an allocator (a file, a
// database, the disk under it), as opposed to a refusal by the allocator's
// policy: the caller could not read or keep its records. CNI reports it as
// an I/O failure.
type StoreError struct {
	Op  string // what the store was doing, e.g. "committing to /var/lib/cni/networks/pods/duet-ipam.db"
	Err error
}

func (e *StoreError) Error() string { return e.Op + ": " + e.Err.Error() }
func (e *StoreError) Unwrap() error { return e.Err }
