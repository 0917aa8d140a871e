package satoken

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
)

// objects is a fake Lookup.
type objects struct {
	sas     map[string]*corev1.ServiceAccount
	pods    map[string]*corev1.Pod
	secrets map[string]*corev1.Secret
}

func notFound(r, name string) error {
	return apierrors.NewNotFound(schema.GroupResource{Resource: r}, name)
}

func (o *objects) ServiceAccount(_ context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	if v, ok := o.sas[ns+"/"+name]; ok {
		return v, nil
	}
	return nil, notFound("serviceaccounts", name)
}

func (o *objects) Pod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	if v, ok := o.pods[ns+"/"+name]; ok {
		return v, nil
	}
	return nil, notFound("pods", name)
}

func (o *objects) Secret(_ context.Context, ns, name string) (*corev1.Secret, error) {
	if v, ok := o.secrets[ns+"/"+name]; ok {
		return v, nil
	}
	return nil, notFound("secrets", name)
}

func key(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type fixture struct {
	issuer *Issuer
	auth   *Authenticator
	objs   *objects
	sa     *corev1.ServiceAccount
	pod    *corev1.Pod
	secret *corev1.Secret
	node   *corev1.Node
}

func newFixture(t testing.TB) *fixture {
	k := key(t)
	iss, err := NewIssuer(k, DefaultIssuer)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{
		issuer: iss,
		sa:     &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web", UID: "sa-1"}},
		pod:    &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web-0", UID: "pod-1"}},
		secret: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "tok", UID: "sec-1"}},
		node:   &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "node-1"}},
	}
	f.objs = &objects{
		sas:     map[string]*corev1.ServiceAccount{"app/web": f.sa},
		pods:    map[string]*corev1.Pod{"app/web-0": f.pod},
		secrets: map[string]*corev1.Secret{"app/tok": f.secret},
	}
	f.auth = NewAuthenticator(&k.PublicKey, DefaultIssuer, []string{DefaultIssuer}, f.objs)
	return f
}

func (f *fixture) issue(t *testing.T, r Request) string {
	t.Helper()
	if r.ServiceAccount == nil {
		r.ServiceAccount = f.sa
	}
	if r.Audiences == nil {
		r.Audiences = []string{DefaultIssuer}
	}
	if r.Expiration == 0 {
		r.Expiration = time.Hour
	}
	tok, exp, err := f.issuer.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	if d := exp.Sub(f.issuer.now()); d < r.Expiration-2*time.Second || d > r.Expiration {
		t.Errorf("expires in %v, want %v", d, r.Expiration)
	}
	return tok
}

func TestPodBoundToken(t *testing.T) {
	f := newFixture(t)
	tok := f.issue(t, Request{Pod: f.pod, Node: f.node, WarnAfter: time.Hour})
	resp, ok, err := f.auth.AuthenticateToken(context.Background(), tok)
	if err != nil || !ok {
		t.Fatalf("ok %v, err %v", ok, err)
	}
	u := resp.User
	if u.GetName() != "system:serviceaccount:app:web" || u.GetUID() != "sa-1" {
		t.Errorf("user %q uid %q", u.GetName(), u.GetUID())
	}
	if g := strings.Join(u.GetGroups(), ","); g != "system:serviceaccounts,system:serviceaccounts:app,system:authenticated" {
		t.Errorf("groups %s", g)
	}
	ex := u.GetExtra()
	if ex[serviceaccount.PodNameKey][0] != "web-0" || ex[serviceaccount.PodUIDKey][0] != "pod-1" || ex[serviceaccount.NodeNameKey][0] != "n1" ||
		!strings.HasPrefix(ex[ExtraCredentialID][0], "JTI=") {
		t.Errorf("extra %v", ex)
	}

	// The claims are Kubernetes' format.
	var c Claims
	if _, _, err := jwt.NewParser().ParseUnverified(tok, &c); err != nil {
		t.Fatal(err)
	}
	if k := c.Kubernetes; k.Namespace != "app" || k.ServiceAccount.Name != "web" || k.Pod.UID != "pod-1" || k.Node.Name != "n1" || k.WarnAfter == nil {
		t.Errorf("kubernetes.io claim %+v", k)
	}

	// Deleting the pod revokes it; so does a new pod of the same name.
	f.objs.pods["app/web-0"] = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web-0", UID: "pod-2"}}
	if _, _, err := f.auth.AuthenticateToken(context.Background(), tok); err == nil || !strings.Contains(err.Error(), "was deleted") {
		t.Errorf("a token of a replaced pod: %v", err)
	}
	delete(f.objs.pods, "app/web-0")
	if _, _, err := f.auth.AuthenticateToken(context.Background(), tok); err == nil || !strings.Contains(err.Error(), "pod app/web-0 the token is bound to no longer exists") {
		t.Errorf("a token of a deleted pod: %v", err)
	}
}

func TestInvalidTokens(t *testing.T) {
	f := newFixture(t)
	other := newFixture(t)
	expired := newFixture(t)
	expired.issuer.now = func() time.Time { return time.Now().Add(-3 * time.Hour) }
	expired.auth = f.auth
	expired.issuer.key = f.issuer.key

	good := f.issue(t, Request{})
	parts := strings.Split(good, ".")
	// The same signature over claims for another ServiceAccount.
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.ReplaceAll(string(payload), "app:web", "app:admin"))) + "." + parts[2]
	for _, tc := range []struct {
		name    string
		token   string
		mine    bool
		wantErr string
	}{
		{name: "valid", token: good, mine: true},
		{name: "not a JWT", token: "abcdef"},
		{name: "another issuer's JWT", token: func() string {
			s, _ := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.RegisteredClaims{Issuer: "https://elsewhere"}).SignedString(f.issuer.key)
			return s
		}()},
		{name: "signed by another key", token: other.issue(t, Request{ServiceAccount: f.sa}), wantErr: "signature is invalid"},
		{name: "tampered", token: forged, wantErr: "signature is invalid"},
		{name: "expired", token: expired.issue(t, Request{ServiceAccount: f.sa, Expiration: time.Hour}), wantErr: "token is expired"},
		{name: "another audience", token: f.issue(t, Request{Audiences: []string{"vault"}}), wantErr: `audiences ["vault"] do not include`},
		{name: "ServiceAccount recreated", token: f.issue(t, Request{ServiceAccount: &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web", UID: "sa-0"}}}),
			wantErr: "was deleted and created again"},
		{name: "ServiceAccount gone", token: f.issue(t, Request{ServiceAccount: &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "gone", UID: "x"}}}),
			wantErr: "serviceaccount app/gone the token is bound to no longer exists"},
		{name: "bound secret gone", token: f.issue(t, Request{Secret: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "tok", UID: "sec-0"}}}),
			wantErr: "secret app/tok the token is bound to was deleted"},
		{name: "bound secret", token: f.issue(t, Request{Secret: f.secret}), mine: true},
		{name: "alg none", token: func() string {
			s, _ := jwt.NewWithClaims(jwt.SigningMethodNone, Claims{RegisteredClaims: jwt.RegisteredClaims{Issuer: DefaultIssuer}}).SignedString(jwt.UnsafeAllowNoneSignatureType)
			return s
		}(), wantErr: "invalid ServiceAccount token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, ok, err := f.auth.AuthenticateToken(context.Background(), tc.token)
			switch {
			case tc.wantErr != "":
				if err == nil || ok || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("ok %v err %v, want an error containing %q", ok, err, tc.wantErr)
				}
			case tc.mine:
				if err != nil || !ok || resp.User.GetName() != "system:serviceaccount:app:web" {
					t.Errorf("ok %v err %v", ok, err)
				}
			default:
				if err != nil || ok {
					t.Errorf("ok %v err %v, want it left to other authenticators", ok, err)
				}
			}
		})
	}
}

// FuzzAuthenticateToken: whatever a client sends as a bearer token, the
// authenticator answers without panicking, and whatever it accepts is
// the one ServiceAccount it signed a token for.
func FuzzAuthenticateToken(f *testing.F) {
	fx := newFixture(f)
	tok, _, err := fx.issuer.Issue(Request{ServiceAccount: fx.sa, Audiences: []string{DefaultIssuer}, Expiration: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tok)
	f.Add("a.b.c")
	f.Add("")
	f.Add("eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2t1YmVybmV0ZXMuZGVmYXVsdC5zdmMuY2x1c3Rlci5sb2NhbCJ9.")
	f.Fuzz(func(t *testing.T, s string) {
		resp, ok, err := fx.auth.AuthenticateToken(context.Background(), s)
		if ok && (err != nil || resp.User.GetName() != "system:serviceaccount:app:web") {
			t.Errorf("accepted %q as %v (%v)", s, resp, err)
		}
	})
}
