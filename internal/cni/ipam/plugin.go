package ipam

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/alloc/boltstore"
)

// ErrPluginNotAvailable is CNI 1.1's error code 50: the plugin cannot
// service ADD requests (here: a range set is exhausted).
const ErrPluginNotAvailable uint = 50

// Plugin wires the CNI verbs to the config parser and the pod-IP policy
// (alloc.PodIPs) over the network's bbolt store.
type Plugin struct {
	// Now is the clock for cool-downs; nil means time.Now.
	Now func() time.Time
	// LockTimeout bounds the wait for the network's lock; zero means
	// boltstore.DefaultLockTimeout.
	LockTimeout time.Duration
	// Stdout receives ADD's result; nil means os.Stdout.
	Stdout io.Writer
}

// Funcs returns the verbs for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// open opens the network's store: waiting too long for another
// invocation's lock is CNI's "try again later" (11), any other failure an
// I/O failure (5).
func (p *Plugin) open(c *Config) (*boltstore.Store, error) {
	timeout := p.LockTimeout
	if timeout == 0 {
		timeout = boltstore.DefaultLockTimeout
	}
	st, err := boltstore.Open(c.DataDir, c.Name, timeout)
	if err != nil {
		var timeout *boltstore.LockTimeoutError
		if errors.As(err, &timeout) {
			return nil, types.NewError(types.ErrTryAgainLater, err.Error(), "")
		}
		return nil, types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	return st, nil
}

func parse(args *skel.CmdArgs) (*Config, error) {
	c, err := Parse(args.StdinData, args.Args)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "duet-ipam: "+err.Error(), "")
	}
	return c, nil
}

// withPolicy runs fn with the pod-IP policy over the network's store, open
// for the call, as every verb but VERSION does.
func (p *Plugin) withPolicy(c *Config, fn func(pol *alloc.PodIPs) error) error {
	st, err := p.open(c)
	if err != nil {
		return err
	}
	defer st.Close()
	pol, err := alloc.NewPodIPs(st, c.RangeSets, alloc.PodIPOptions{Cooldown: c.Cooldown, Now: p.Now})
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "duet-ipam: "+err.Error(), "")
	}
	return fn(pol)
}

// failed reports a verb's failure on network c. The store's own failures
// (the disk is full, the file cannot be read or written) are CNI's I/O
// failure, code 5, wherever they happen; the policy's refusals (a range is
// full, a requested address is held) keep the plugin's generic code.
func failed(c *Config, err error) error {
	var storeErr *alloc.StoreError
	if errors.As(err, &storeErr) {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("duet-ipam: network %s: %v", c.Name, err), "")
	}
	return fmt.Errorf("duet-ipam: network %s: %w", c.Name, err)
}

func attachment(args *skel.CmdArgs) alloc.Attachment {
	return alloc.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
}

// Add reserves one address per range set and prints the result.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	return p.withPolicy(c, func(pol *alloc.PodIPs) error {
		addrs, err := pol.Reserve(attachment(args), c.Requested)
		if err != nil {
			return failed(c, err)
		}
		res := Result(c, addrs)
		out, err := res.GetAsVersion(resultVersion(c))
		if err != nil {
			// Both addresses or neither: the runtime gets no result, so it
			// must not keep a reservation either.
			if _, relErr := pol.Unreserve(attachment(args)); relErr != nil {
				return failed(c, errors.Join(err, relErr))
			}
			return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("duet-ipam: network %s: %v", c.Name, err), "")
		}
		w := p.Stdout
		if w == nil {
			w = os.Stdout
		}
		if err := out.PrintTo(w); err != nil {
			// The reservation stays: the runtime retries ADD with the same
			// attachment, which gets the same addresses.
			return types.NewError(types.ErrIOFailure, fmt.Sprintf("duet-ipam: network %s: writing the result: %v", c.Name, err), "")
		}
		return nil
	})
}

func resultVersion(c *Config) string {
	if c.CNIVersion == "" {
		return "0.1.0" // what the CNI library assumes for a config without one
	}
	return c.CNIVersion
}

// Result is the CNI result for addrs, one per range set of c.
func Result(c *Config, addrs []netip.Addr) *current.Result {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: c.Routes, DNS: c.DNS}
	for i, a := range addrs {
		r, _ := c.RangeSets[i].RangeOf(a)
		res.IPs = append(res.IPs, &current.IPConfig{
			Address: net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(r.Subnet.Bits(), a.BitLen())},
			Gateway: r.Gateway.AsSlice(),
		})
	}
	return res
}

// Del releases the attachment's addresses; an unknown one is success.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	return p.withPolicy(c, func(pol *alloc.PodIPs) error {
		if _, err := pol.Release(attachment(args)); err != nil {
			return failed(c, err)
		}
		return nil
	})
}

// Check verifies that the attachment holds one address per range set and,
// given a prevResult, that the result carries them.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	return p.withPolicy(c, func(pol *alloc.PodIPs) error {
		addrs, err := pol.Check(attachment(args))
		if errors.Is(err, alloc.ErrUnknownAttachment) {
			return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("duet-ipam: network %s: %v", c.Name, err), "")
		}
		if err != nil {
			return failed(c, err)
		}
		if len(c.PrevResult) == 0 {
			return nil
		}
		prev, err := version.NewResult(resultVersion(c), c.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "duet-ipam: decoding prevResult: "+err.Error(), "")
		}
		res, err := current.NewResultFromResult(prev)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "duet-ipam: converting prevResult: "+err.Error(), "")
		}
		for _, a := range addrs {
			found := false
			for _, ip := range res.IPs {
				if got, ok := netip.AddrFromSlice(ip.Address.IP); ok && got.Unmap() == a {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("duet-ipam: network %s: reserved address %s of container %s interface %s is missing from prevResult", c.Name, a, args.ContainerID, args.IfName)
			}
		}
		return nil
	})
}

// ValidAttachmentsKey is the GC argument naming the attachments that are
// still valid.
const ValidAttachmentsKey = "cni.dev/valid-attachments"

// GC releases every reservation not in cni.dev/valid-attachments. The
// runtime must send that key (CNI 1.1: its list is what GC keeps); without
// it, releasing "everything not listed" would release every live
// reservation, so such a GC is refused as an invalid configuration and
// releases nothing. An empty list does release everything.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	if c.ValidAttachments == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("duet-ipam: network %s: GC without %s: the runtime must list the attachments that are still valid (an empty list releases every reservation); nothing was released", c.Name, ValidAttachmentsKey), "")
	}
	valid := make([]alloc.Attachment, len(c.ValidAttachments))
	for i, v := range c.ValidAttachments {
		valid[i] = alloc.Attachment{ContainerID: v.ContainerID, IfName: v.IfName}
	}
	return p.withPolicy(c, func(pol *alloc.PodIPs) error {
		if _, err := pol.GC(valid); err != nil {
			return failed(c, err)
		}
		return nil
	})
}

// Status fails with code 50 when a range set has no address left.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	return p.withPolicy(c, func(pol *alloc.PodIPs) error {
		if err := pol.Available(); err != nil {
			if errors.Is(err, alloc.ErrFull) {
				return types.NewError(ErrPluginNotAvailable, fmt.Sprintf("duet-ipam: network %s: %v", c.Name, err), "")
			}
			return failed(c, err)
		}
		return nil
	})
}
