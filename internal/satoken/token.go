// Package satoken issues and verifies ServiceAccount tokens: JWTs signed
// by the cluster's service-account key, in Kubernetes' format (the
// "kubernetes.io" private claim naming the namespace, the ServiceAccount
// and the object the token is bound to), so that workloads and tools that
// read them see what they expect.
//
// A token is valid while it has not expired and everything it names still
// exists with the same UID: deleting the pod a token is bound to, or its
// ServiceAccount, revokes it.
package satoken

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/user"
)

// DefaultIssuer is the `iss` of Duet's tokens and the audience the API
// server accepts, the value kubeadm clusters use.
const DefaultIssuer = "https://kubernetes.default.svc.cluster.local"

// ExtraCredentialID is the user.Info extra key of a token's ID.
const ExtraCredentialID = "authentication.kubernetes.io/credential-id"

// Claims is a token's content.
type Claims struct {
	jwt.RegisteredClaims
	Kubernetes *Private `json:"kubernetes.io,omitempty"`
}

// Private is the "kubernetes.io" claim.
type Private struct {
	Namespace      string `json:"namespace"`
	ServiceAccount Ref    `json:"serviceaccount"`
	Pod            *Ref   `json:"pod,omitempty"`
	Secret         *Ref   `json:"secret,omitempty"`
	Node           *Ref   `json:"node,omitempty"`
	// WarnAfter, for tokens of kube-api-access volumes, is when the
	// token should have been refreshed.
	WarnAfter *jwt.NumericDate `json:"warnafter,omitempty"`
}

// Ref names an object the token belongs to.
type Ref struct {
	Name string    `json:"name"`
	UID  types.UID `json:"uid"`
}

// Issuer signs tokens.
type Issuer struct {
	key    *ecdsa.PrivateKey
	kid    string
	issuer string
	now    func() time.Time
}

// NewIssuer signs with key (ES256) as issuer.
func NewIssuer(key *ecdsa.PrivateKey, issuer string) (*Issuer, error) {
	kid, err := KeyID(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	return &Issuer{key: key, kid: kid, issuer: issuer, now: time.Now}, nil
}

// KeyID is the `kid` of tokens signed by the key: a hash of its public
// half, as Kubernetes derives it, so verifiers can tell keys apart.
func KeyID(pub *ecdsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encoding the service-account public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// Request is what a token is for.
type Request struct {
	ServiceAccount *corev1.ServiceAccount
	Audiences      []string
	Expiration     time.Duration
	// At most one of Pod and Secret; Node goes with Pod (the pod's
	// node), or alone.
	Pod       *corev1.Pod
	Secret    *corev1.Secret
	Node      *corev1.Node
	WarnAfter time.Duration
}

// Issue signs a token for r and returns it with its expiry.
func (i *Issuer) Issue(r Request) (string, time.Time, error) {
	now := i.now().Truncate(time.Second)
	exp := now.Add(r.Expiration)
	sa := r.ServiceAccount
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    i.issuer,
			Subject:   serviceaccount.MakeUsername(sa.Namespace, sa.Name),
			Audience:  r.Audiences,
			ExpiresAt: jwt.NewNumericDate(exp),
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ID:        string(uuid.NewUUID()),
		},
		Kubernetes: &Private{Namespace: sa.Namespace, ServiceAccount: Ref{Name: sa.Name, UID: sa.UID}},
	}
	if r.Pod != nil {
		c.Kubernetes.Pod = &Ref{Name: r.Pod.Name, UID: r.Pod.UID}
	}
	if r.Secret != nil {
		c.Kubernetes.Secret = &Ref{Name: r.Secret.Name, UID: r.Secret.UID}
	}
	if r.Node != nil {
		c.Kubernetes.Node = &Ref{Name: r.Node.Name, UID: r.Node.UID}
	}
	if r.WarnAfter > 0 {
		c.Kubernetes.WarnAfter = jwt.NewNumericDate(now.Add(r.WarnAfter))
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, c)
	t.Header["kid"] = i.kid
	s, err := t.SignedString(i.key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("signing a ServiceAccount token: %w", err)
	}
	return s, exp, nil
}

// Lookup reads what tokens name, as the store holds it now; a missing
// object is a NotFound error.
type Lookup interface {
	ServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error)
	Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
	Secret(ctx context.Context, namespace, name string) (*corev1.Secret, error)
}

// Authenticator accepts the Issuer's tokens as bearer tokens.
type Authenticator struct {
	key       *ecdsa.PublicKey
	issuer    string
	audiences []string
	lookup    Lookup
	now       func() time.Time
}

// NewAuthenticator accepts tokens signed by key for issuer whose audience
// includes one of audiences, while what they name exists (lookup).
func NewAuthenticator(key *ecdsa.PublicKey, issuer string, audiences []string, lookup Lookup) *Authenticator {
	return &Authenticator{key: key, issuer: issuer, audiences: audiences, lookup: lookup, now: time.Now}
}

// AuthenticateToken implements authenticator.Token. A token that is not
// one of this issuer's is not an error (another authenticator may know
// it); one of its own that is invalid is.
func (a *Authenticator) AuthenticateToken(ctx context.Context, token string) (*authenticator.Response, bool, error) {
	if !a.mine(token) {
		return nil, false, nil
	}
	var c Claims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return a.key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodES256.Alg()}), jwt.WithIssuer(a.issuer),
		jwt.WithExpirationRequired(), jwt.WithTimeFunc(a.now), jwt.WithLeeway(time.Minute))
	if err != nil {
		return nil, false, fmt.Errorf("invalid ServiceAccount token: %w", err)
	}
	if !slices.ContainsFunc(c.Audience, func(aud string) bool { return slices.Contains(a.audiences, aud) }) {
		return nil, false, fmt.Errorf("invalid ServiceAccount token: audiences %q do not include the API server's (%q)", c.Audience, a.audiences)
	}
	k := c.Kubernetes
	if k == nil || k.Namespace == "" || k.ServiceAccount.Name == "" {
		return nil, false, errors.New("invalid ServiceAccount token: no kubernetes.io claim naming its ServiceAccount")
	}
	if c.Subject != serviceaccount.MakeUsername(k.Namespace, k.ServiceAccount.Name) {
		return nil, false, errors.New("invalid ServiceAccount token: its subject is not its ServiceAccount")
	}
	if err := a.stillBound(ctx, k); err != nil {
		return nil, false, fmt.Errorf("invalid ServiceAccount token: %w", err)
	}
	extra := map[string][]string{}
	if c.ID != "" {
		extra[ExtraCredentialID] = []string{"JTI=" + c.ID}
	}
	if k.Pod != nil {
		extra[serviceaccount.PodNameKey] = []string{k.Pod.Name}
		extra[serviceaccount.PodUIDKey] = []string{string(k.Pod.UID)}
	}
	if k.Node != nil {
		extra[serviceaccount.NodeNameKey] = []string{k.Node.Name}
		if k.Node.UID != "" {
			extra[serviceaccount.NodeUIDKey] = []string{string(k.Node.UID)}
		}
	}
	u := &user.DefaultInfo{
		Name:   c.Subject,
		UID:    string(k.ServiceAccount.UID),
		Groups: append(serviceaccount.MakeGroupNames(k.Namespace), user.AllAuthenticated),
		Extra:  extra,
	}
	var auds authenticator.Audiences
	for _, aud := range c.Audience {
		if slices.Contains(a.audiences, aud) {
			auds = append(auds, aud)
		}
	}
	return &authenticator.Response{User: u, Audiences: auds}, true, nil
}

// mine tells a JWT of this issuer from any other bearer token without
// checking it.
func (a *Authenticator) mine(token string) bool {
	if strings.Count(token, ".") != 2 {
		return false
	}
	var c jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(token, &c); err != nil {
		return false
	}
	return c.Issuer == a.issuer
}

// stillBound checks that the ServiceAccount, and the pod or Secret the
// token is bound to, exist as they were when it was issued.
func (a *Authenticator) stillBound(ctx context.Context, k *Private) error {
	sa, err := a.lookup.ServiceAccount(ctx, k.Namespace, k.ServiceAccount.Name)
	if err != nil {
		return describe(err, "serviceaccount", k.Namespace, k.ServiceAccount.Name)
	}
	if sa.UID != k.ServiceAccount.UID {
		return fmt.Errorf("ServiceAccount %s/%s was deleted and created again (UID %s, the token's %s)", k.Namespace, sa.Name, sa.UID, k.ServiceAccount.UID)
	}
	if p := k.Pod; p != nil {
		pod, err := a.lookup.Pod(ctx, k.Namespace, p.Name)
		if err != nil {
			return describe(err, "pod", k.Namespace, p.Name)
		}
		if pod.UID != p.UID {
			return fmt.Errorf("pod %s/%s the token is bound to was deleted (a pod of that name has UID %s, the token's %s)", k.Namespace, p.Name, pod.UID, p.UID)
		}
	}
	if s := k.Secret; s != nil {
		sec, err := a.lookup.Secret(ctx, k.Namespace, s.Name)
		if err != nil {
			return describe(err, "secret", k.Namespace, s.Name)
		}
		if sec.UID != s.UID {
			return fmt.Errorf("secret %s/%s the token is bound to was deleted (UID %s, the token's %s)", k.Namespace, s.Name, sec.UID, s.UID)
		}
	}
	return nil
}

func describe(err error, kind, ns, name string) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%s %s/%s the token is bound to no longer exists", kind, ns, name)
	}
	return fmt.Errorf("looking up %s %s/%s: %w", kind, ns, name, err)
}
