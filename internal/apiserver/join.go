package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	tokenunion "k8s.io/apiserver/pkg/authentication/token/union"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"

	"github.com/duet-net/duet/internal/jointoken"
	"github.com/duet-net/duet/internal/pki"
)

// How a server joins a running one's cluster (`duet server --join URL`):
//
//  1. It reads the join token (DATA_DIR/join-token, written by every
//     server; or --token), which names the cluster CA by hash and holds
//     the cluster's secret.
//  2. It POSTs its member name and etcd peer URL to joinMembersPath on a
//     running server, over TLS verified against the pinned CA (servers
//     send the CA in their certificate chain), with the secret as bearer
//     token. That server adds it to etcd as a learner, which holds no
//     vote, so a joiner that never comes up costs the cluster nothing,
//     and answers with the cluster CA and the member list.
//  3. It starts its etcd member in the existing cluster, peer traffic
//     over mutual TLS with a certificate of the cluster CA.
//  4. Once its member has caught up, it asks joinPromotePath to make it a
//     voting member, and goes on starting as any server does.
const (
	joinPathPrefix  = "/duet/join/"
	joinMembersPath = joinPathPrefix + "v1/members"
	joinPromotePath = joinPathPrefix + "v1/promote"
	joinSecretKey   = "/duet/join/secret"
	// JoinTokenFile is the file in --data-dir every server writes its
	// cluster's join token to.
	JoinTokenFile = "join-token"
	// joinUser is who presents the join secret.
	joinUser = "system:duet:joining-server"
)

type joinRequest struct {
	Name    string `json:"name"`
	PeerURL string `json:"peerURL"`
}

type joinResponse struct {
	// ID is the new member's ID.
	ID      uint64     `json:"id"`
	Members []etcdPeer `json:"members"`
	CACert  []byte     `json:"caCert"`
	CAKey   []byte     `json:"caKey"`
}

type promoteRequest struct {
	ID uint64 `json:"id"`
}

// clusterState is what a server with an embedded etcd keeps for the
// servers that join it.
type clusterState struct {
	// secret is the cluster's join secret, shared through etcd.
	secret string
	// mu makes one join at a time through this server.
	mu sync.Mutex
}

// sharedJoinSecret returns the cluster's join secret: the first server
// records a new one, every other server and restart reads it back.
func sharedJoinSecret(ctx context.Context, endpoints []string) (string, error) {
	mine, err := jointoken.NewSecret()
	if err != nil {
		return "", err
	}
	stored, err := firstRecord(ctx, endpoints, joinSecretKey, "join secret", []byte(mine))
	if err != nil {
		return "", err
	}
	return string(stored), nil
}

// startEtcd starts this server's etcd member: a new single-member
// cluster, a restart from its data, or a member joining the cluster of
// --join the first time. It returns once the member is a voting member
// with the cluster's CA.
func (s *Server) startEtcd(ctx context.Context) (*EmbeddedEtcd, error) {
	cfg := s.cfg
	dir := filepath.Join(cfg.DataDir, "etcd")
	pkiDir := filepath.Join(cfg.DataDir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	listenHost, peerHost := peerHosts(cfg)
	m := etcdMember{Dir: dir, PeerHost: peerHost, ListenHost: listenHost}
	var tok jointoken.Token
	if len(cfg.Join) > 0 {
		var err error
		if tok, err = s.joinToken(); err != nil {
			return nil, err
		}
	}
	if len(cfg.Join) > 0 && !memberDataExists(dir) {
		name, err := memberName(dir)
		if err != nil {
			return nil, err
		}
		port, err := reservePeerPort(dir, listenHost)
		if err != nil {
			return nil, err
		}
		peerURL := (&url.URL{Scheme: "https", Host: net.JoinHostPort(peerHost, fmt.Sprint(port))}).String()
		s.log.Info("joining the cluster", "servers", cfg.Join, "member", name, "peerURL", peerURL)
		var resp joinResponse
		if err := callJoin(ctx, cfg.Join, tok, joinMembersPath, joinRequest{Name: name, PeerURL: peerURL}, &resp); err != nil {
			return nil, err
		}
		if _, err := pki.InstallCA(pkiDir, resp.CACert, resp.CAKey); err != nil {
			return nil, fmt.Errorf("installing the cluster CA: %w", err)
		}
		m.Join = resp.Members
	}
	ca, err := pki.LoadOrCreateCA(pkiDir, "duet-ca")
	if err != nil {
		return nil, err
	}
	m.CA = ca
	s.log.Info("starting embedded etcd", "dir", dir)
	e, err := StartEmbeddedEtcd(ctx, m)
	if err != nil {
		return nil, err
	}
	if e.IsLearner() {
		if len(cfg.Join) == 0 {
			e.Close()
			return nil, errors.New("this server's etcd member is a learner not yet promoted: start it with --join naming a running server of its cluster")
		}
		s.log.Info("waiting for the etcd member to catch up, to become a voting member", "member", e.Name)
		if err := promote(ctx, cfg.Join, tok, e); err != nil {
			e.Close()
			return nil, err
		}
	}
	// The CA recorded in etcd is the cluster's; a data directory whose
	// own CA differs (its pki wiped, or a restored snapshot) adopts it,
	// and its member must then present a peer certificate of that CA.
	shared, err := sharedCA(ctx, []string{e.ClientURL}, pkiDir)
	if err != nil {
		e.Close()
		return nil, err
	}
	if !bytes.Equal(shared.Cert.Raw, ca.Cert.Raw) {
		s.log.Info("adopted the cluster CA recorded in etcd; restarting etcd with a peer certificate of it")
		e.Close()
		m.CA, m.Join = shared, nil
		if e, err = StartEmbeddedEtcd(ctx, m); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// peerHosts are where this server's etcd peer port listens and the
// address other servers reach it at: the bind address, or for an
// unspecified one every address and the address of the default route.
func peerHosts(cfg *Config) (listen, advertise string) {
	if !cfg.BindAddress.IsUnspecified() {
		return cfg.BindAddress.String(), cfg.BindAddress.String()
	}
	return "", advertisedAddrs(cfg.BindAddress)[0].String()
}

// reservePeerPort picks the member's peer port before it starts, for the
// join request, and records it where StartEmbeddedEtcd finds it.
func reservePeerPort(dir, host string) (int, error) {
	portsFile := filepath.Join(dir, "ports.json")
	var ports etcdPorts
	if data, err := os.ReadFile(portsFile); err == nil {
		_ = json.Unmarshal(data, &ports)
	}
	var err error
	if ports.Peer, err = freePort(host, ports.Peer); err != nil {
		return 0, err
	}
	data, err := json.Marshal(ports)
	if err != nil {
		return 0, err
	}
	return ports.Peer, os.WriteFile(portsFile, data, 0o600)
}

// joinToken reads --token, else --token-file, else DATA_DIR/join-token.
func (s *Server) joinToken() (jointoken.Token, error) {
	if s.cfg.JoinToken != "" {
		t, err := jointoken.Parse(s.cfg.JoinToken)
		if err != nil {
			return t, fmt.Errorf("--token: %w", err)
		}
		return t, nil
	}
	path := s.cfg.JoinTokenFile
	if path == "" {
		path = filepath.Join(s.cfg.DataDir, JoinTokenFile)
	}
	t, err := jointoken.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return t, fmt.Errorf("--join needs the cluster's join token: copy a running server's DATA_DIR/%s to %s, or pass --token or --token-file", JoinTokenFile, path)
	}
	return t, err
}

// joinTimeout bounds the wait for a server of --join to answer.
const joinTimeout = 2 * time.Minute

// callJoin POSTs req to path on the first server of servers that
// answers, retrying while none does (they may be starting).
func callJoin(ctx context.Context, servers []string, tok jointoken.Token, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tok.TLSConfig(), Proxy: nil}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	var last error
	for attempt := 0; ; attempt++ {
		for _, srv := range servers {
			err := postJoin(ctx, client, srv+path, tok.Secret, body, resp)
			if err == nil {
				return nil
			}
			var perm *permanentError
			if errors.As(err, &perm) {
				return fmt.Errorf("joining through %s: %w", srv, err)
			}
			last = fmt.Errorf("%s: %w", srv, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("joining the cluster: no server of --join answered within %v: %w", joinTimeout, last)
		case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 2*time.Second)):
		}
	}
}

// permanentError is an answer that asking again will not change.
type permanentError struct{ msg string }

func (e *permanentError) Error() string { return e.msg }

func postJoin(ctx context.Context, client *http.Client, u, secret string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return &permanentError{err.Error()}
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, jointoken.ErrCAMismatch) || strings.Contains(err.Error(), jointoken.ErrCAMismatch.Error()) {
			return &permanentError{err.Error()}
		}
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusOK:
		if err := json.Unmarshal(data, out); err != nil {
			return &permanentError{fmt.Sprintf("reading the answer: %v", err)}
		}
		return nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return &permanentError{fmt.Sprintf("the server refused the join token (%s): is it this cluster's?", resp.Status)}
	case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusConflict:
		return &permanentError{fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(data)))}
	default:
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
}

// promote asks a server of the cluster to make this learner a voting
// member, until it has caught up enough for etcd to agree.
func promote(ctx context.Context, servers []string, tok jointoken.Token, e *EmbeddedEtcd) error {
	ctx, cancel := context.WithTimeout(ctx, etcdReadyTimeout)
	defer cancel()
	for e.IsLearner() {
		var out struct{}
		err := callJoin(ctx, servers, tok, joinPromotePath, promoteRequest{ID: e.ID()}, &out)
		if err != nil {
			return fmt.Errorf("promoting this etcd member to a voting member: %w", err)
		}
		// The promotion reaches this member through raft.
		select {
		case <-ctx.Done():
			return fmt.Errorf("promoting this etcd member: still a learner: %w", context.Cause(ctx))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// joinAuthenticator accepts the cluster's join secret as a bearer token.
func (c *clusterState) authenticator() authenticator.Token {
	return authenticator.TokenFunc(func(_ context.Context, token string) (*authenticator.Response, bool, error) {
		if c.secret == "" || !jointoken.SecretMatches(token, c.secret) {
			return nil, false, nil
		}
		return &authenticator.Response{User: &user.DefaultInfo{Name: joinUser}}, true, nil
	})
}

// withJoin puts the join secret before the other token authenticators.
func (c *clusterState) withJoin(tokens authenticator.Token) authenticator.Token {
	return tokenunion.New(c.authenticator(), tokens)
}

// authorizeJoin lets a joining server POST to the join endpoints and
// nothing else, and leaves everyone else to next.
func authorizeJoin(next authorizer.Authorizer) authorizer.Authorizer {
	return authorizer.AuthorizerFunc(func(ctx context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
		if a.GetUser() == nil || a.GetUser().GetName() != joinUser {
			return next.Authorize(ctx, a)
		}
		if !a.IsResourceRequest() && a.GetVerb() == "post" && strings.HasPrefix(a.GetPath(), joinPathPrefix) {
			return authorizer.DecisionAllow, "", nil
		}
		return authorizer.DecisionDeny, "the join token only lets a server join the cluster", nil
	})
}

// installJoin serves the join endpoints.
func (s *Server) installJoin() {
	mux := s.generic.Handler.NonGoRestfulMux
	mux.Handle(joinMembersPath, http.HandlerFunc(s.serveJoin))
	mux.Handle(joinPromotePath, http.HandlerFunc(s.servePromote))
}

func joinError(w http.ResponseWriter, code int, format string, args ...any) {
	http.Error(w, fmt.Sprintf(format, args...), code)
}

func (s *Server) serveJoin(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		joinError(w, http.StatusMethodNotAllowed, "POST only")
		return
	}
	if s.etcd == nil {
		joinError(w, http.StatusConflict, "%v", errNoEmbeddedEtcd)
		return
	}
	var req joinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		joinError(w, http.StatusBadRequest, "reading the join request: %v", err)
		return
	}
	if err := validateJoinRequest(req); err != nil {
		joinError(w, http.StatusBadRequest, "%v", err)
		return
	}
	s.cluster.mu.Lock()
	defer s.cluster.mu.Unlock()
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	resp, err := s.addLearner(ctx, req)
	if err != nil {
		s.log.Error("a server's join failed", "member", req.Name, "peerURL", req.PeerURL, "err", err)
		joinError(w, http.StatusServiceUnavailable, "adding the etcd member: %v", err)
		return
	}
	if resp.CACert, resp.CAKey, err = s.ca.PEM(); err != nil {
		joinError(w, http.StatusInternalServerError, "reading the cluster CA: %v", err)
		return
	}
	s.log.Info("a server joins the cluster", "member", req.Name, "peerURL", req.PeerURL, "id", fmt.Sprintf("%x", resp.ID))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func validateJoinRequest(req joinRequest) error {
	if req.Name == "" || len(req.Name) > 63 || nameRE.MatchString(req.Name) {
		return fmt.Errorf("name %q: must be 1 to 63 lower-case letters, digits and -", req.Name)
	}
	u, err := url.Parse(req.PeerURL)
	if err != nil || u.Scheme != "https" || u.Port() == "" || u.Hostname() == "" || u.Path != "" || u.User != nil {
		return fmt.Errorf("peerURL %q: must be https://HOST:PORT", req.PeerURL)
	}
	return nil
}

// addLearner adds the joining member as a learner. A member already at
// its peer URL is the same server come back without its data (wiped, or
// a join that failed half-way): it is removed first, as is a learner
// that never started, which would otherwise block every later join
// (etcd allows one learner at a time).
func (s *Server) addLearner(ctx context.Context, req joinRequest) (joinResponse, error) {
	list, err := s.etcdClient.MemberList(ctx)
	if err != nil {
		return joinResponse{}, err
	}
	for _, m := range list.Members {
		stale := slices.Contains(m.PeerURLs, req.PeerURL) || (m.Name == "" && m.IsLearner)
		if m.Name == req.Name && m.Name != "" {
			stale = true
		}
		if !stale {
			continue
		}
		if m.ID == s.etcd.ID() {
			return joinResponse{}, fmt.Errorf("%s is this server's own etcd member", req.PeerURL)
		}
		s.log.Info("removing a stale etcd member before a join", "name", m.Name, "peerURLs", m.PeerURLs, "learner", m.IsLearner)
		if _, err := s.etcdClient.MemberRemove(ctx, m.ID); err != nil {
			return joinResponse{}, fmt.Errorf("removing the stale member %x at %v: %w", m.ID, m.PeerURLs, err)
		}
	}
	added, err := s.etcdClient.MemberAddAsLearner(ctx, []string{req.PeerURL})
	if err != nil {
		return joinResponse{}, err
	}
	resp := joinResponse{ID: added.Member.ID}
	for _, m := range added.Members {
		name := m.Name
		if m.ID == added.Member.ID {
			name = req.Name
		}
		if name == "" {
			continue // added but never started: not part of the initial cluster
		}
		resp.Members = append(resp.Members, etcdPeer{Name: name, PeerURLs: m.PeerURLs})
	}
	return resp, nil
}

func (s *Server) servePromote(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		joinError(w, http.StatusMethodNotAllowed, "POST only")
		return
	}
	if s.etcd == nil {
		joinError(w, http.StatusConflict, "%v", errNoEmbeddedEtcd)
		return
	}
	var req promoteRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil || req.ID == 0 {
		joinError(w, http.StatusBadRequest, "reading the promote request: want {\"id\": MEMBER-ID}")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	_, err := s.etcdClient.MemberPromote(ctx, req.ID)
	switch {
	case err == nil, errors.Is(err, rpctypes.ErrMemberNotLearner):
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	case errors.Is(err, rpctypes.ErrMemberLearnerNotReady):
		joinError(w, http.StatusServiceUnavailable, "the member has not caught up yet: %v", err)
	case errors.Is(err, rpctypes.ErrMemberNotFound):
		joinError(w, http.StatusConflict, "member %x is not in the cluster (removed meanwhile?): %v", req.ID, err)
	default:
		joinError(w, http.StatusServiceUnavailable, "promoting member %x: %v", req.ID, err)
	}
}

// writeJoinToken writes DATA_DIR/join-token for the servers that join.
func (s *Server) writeJoinToken() error {
	tok := jointoken.New(s.ca.Cert.Raw, s.cluster.secret)
	return jointoken.WriteFile(filepath.Join(s.cfg.DataDir, JoinTokenFile), tok)
}

// Leave removes the server of cfg.DataDir from its etcd cluster, then
// wipes its member's data, so that the directory can start a new cluster
// or join one afresh. The server must be stopped; the rest of the
// cluster must have a quorum without it.
func Leave(ctx context.Context, cfg *Config, log *slog.Logger) error {
	if len(cfg.EtcdServers) > 0 {
		return errors.New("--leave: this server uses an external etcd (--etcd-servers); it has no member to remove")
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	dir := filepath.Join(cfg.DataDir, "etcd")
	if !memberDataExists(dir) {
		return fmt.Errorf("--leave: %s holds no etcd member", dir)
	}
	ca, err := pki.LoadOrCreateCA(filepath.Join(cfg.DataDir, "pki"), "duet-ca")
	if err != nil {
		return err
	}
	listen, advertise := peerHosts(cfg)
	e, err := StartEmbeddedEtcd(ctx, etcdMember{Dir: dir, PeerHost: advertise, ListenHost: listen, CA: ca})
	if err != nil {
		return err
	}
	defer e.Close()
	c, err := e.client()
	if err != nil {
		return err
	}
	defer c.Close()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	list, err := c.MemberList(rctx)
	if err != nil {
		return fmt.Errorf("--leave: listing the cluster's members: %w", err)
	}
	voters := 0
	for _, m := range list.Members {
		if !m.IsLearner {
			voters++
		}
	}
	if voters <= 1 && !e.IsLearner() {
		return errors.New("--leave: this server is its cluster's only voting member; stop it instead, or wipe its data directory")
	}
	log.Info("leaving the cluster", "member", e.Name, "id", fmt.Sprintf("%x", e.ID()), "members", len(list.Members))
	// etcd removes a voting member only once the one removing it has been
	// connected to a quorum for a while (5 s): just started, it has not.
	for {
		_, err := c.MemberRemove(rctx, e.ID())
		if err == nil {
			break
		}
		if !errors.Is(err, rpctypes.ErrUnhealthy) {
			return fmt.Errorf("--leave: removing this server's member: %w", err)
		}
		select {
		case <-rctx.Done():
			return fmt.Errorf("--leave: removing this server's member: %w (are a quorum of the other members up?)", err)
		case <-time.After(time.Second):
		}
	}
	// The member stops itself once it applies its own removal.
	select {
	case <-e.Stopped():
	case <-time.After(10 * time.Second):
	}
	e.Close()
	for _, name := range []string{"data", etcdNameFile, "peer.crt", "peer.key", "peer-ca.crt"} {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("--leave: wiping the member's data: %w", err)
		}
	}
	_ = os.Remove(filepath.Join(cfg.DataDir, JoinTokenFile))
	return nil
}
