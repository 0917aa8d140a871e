package failover

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
)

// Proxy forwards every connection accepted on l to a ready server through
// d, byte for byte (TLS passes through: clients verify the servers
// themselves), until ctx is done. It is how a client that knows one
// address, kubectl with a kubeconfig, follows several servers.
func Proxy(ctx context.Context, l net.Listener, d *Dialer) error {
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Go(func() { forward(ctx, c, d) })
	}
}

func forward(ctx context.Context, c net.Conn, d *Dialer) {
	defer c.Close()
	backend, err := d.DialContext(ctx, "tcp", "")
	if err != nil {
		return
	}
	defer backend.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Either side ending ends both: a server that the Dialer dropped
		// must not leave the client waiting on a half-open connection.
		dst.Close()
		src.Close()
		done <- struct{}{}
	}
	go pipe(backend, c)
	go pipe(c, backend)
	select {
	case <-done:
	case <-ctx.Done():
	}
}
