// Package netexec is a small test server in the spirit of Kubernetes'
// agnhost netexec: over HTTP and UDP, on both IP families, it answers who
// it is, who is calling, and echoes messages.
package netexec

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Hostname is the name the server reports: $HOSTNAME when set (the Duet
// agent sets it to the pod's name, as Kubernetes does in containers),
// else the kernel's.
func Hostname() string {
	if h := os.Getenv("HOSTNAME"); h != "" {
		return h
	}
	h, _ := os.Hostname()
	return h
}

// Handler serves /hostname, /clientip, /echo?msg= and /healthz.
func Handler(hostname string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/hostname", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, hostname)
	})
	mux.HandleFunc("/clientip", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.RemoteAddr)
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.URL.Query().Get("msg"))
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "ok")
	})
	return mux
}

// UDPReply answers one datagram: "hostname", "clientip" or "echo MSG".
func UDPReply(hostname string, msg string, from net.Addr) string {
	msg = strings.TrimRight(msg, "\r\n")
	switch {
	case msg == "hostname":
		return hostname
	case msg == "clientip":
		return from.String()
	case strings.HasPrefix(msg, "echo "):
		return strings.TrimPrefix(msg, "echo ")
	default:
		return "unknown command: " + msg
	}
}

// Server is a netexec server whose sockets are open.
type Server struct {
	hostname string
	tcp      net.Listener
	udp      net.PacketConn
	log      *slog.Logger
}

// Listen opens the sockets on all addresses of both families; a port of 0
// turns that server off. Once it returns, clients can connect.
func Listen(httpPort, udpPort int, log *slog.Logger) (*Server, error) {
	s := &Server{hostname: Hostname(), log: log}
	if httpPort > 0 {
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", httpPort))
		if err != nil {
			return nil, fmt.Errorf("listening on TCP port %d: %w", httpPort, err)
		}
		s.tcp = l
	}
	if udpPort > 0 {
		pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", udpPort))
		if err != nil {
			if s.tcp != nil {
				s.tcp.Close()
			}
			return nil, fmt.Errorf("listening on UDP port %d: %w", udpPort, err)
		}
		s.udp = pc
	}
	return s, nil
}

// Serve answers until ctx is done.
func (s *Server) Serve(ctx context.Context) error {
	errs := make(chan error, 2)
	if s.tcp != nil {
		srv := &http.Server{Handler: Handler(s.hostname), ReadHeaderTimeout: 10 * time.Second}
		go func() { errs <- srv.Serve(s.tcp) }()
		go func() {
			<-ctx.Done()
			shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(shut)
		}()
		s.log.Info("serving HTTP", "addr", s.tcp.Addr().String())
	}
	if s.udp != nil {
		go func() {
			<-ctx.Done()
			s.udp.Close()
		}()
		go func() {
			buf := make([]byte, 65535)
			for {
				n, from, err := s.udp.ReadFrom(buf)
				if err != nil {
					errs <- err
					return
				}
				_, _ = s.udp.WriteTo([]byte(UDPReply(s.hostname, string(buf[:n]), from)), from)
			}
		}()
		s.log.Info("serving UDP", "addr", s.udp.LocalAddr().String())
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errs:
		if ctx.Err() != nil || errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
			return nil
		}
		return err
	}
}
