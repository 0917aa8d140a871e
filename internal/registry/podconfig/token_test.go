package podconfig

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/utils/ptr"

	"github.com/duet-net/duet/internal/satoken"
)

// getter is a fake rest.Getter over objects keyed "namespace/name".
type getter map[string]runtime.Object

func (g getter) Get(ctx context.Context, name string, _ *metav1.GetOptions) (runtime.Object, error) {
	ns, _ := genericapirequest.NamespaceFrom(ctx)
	if o, ok := g[ns+"/"+name]; ok {
		return o.DeepCopyObject(), nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "things"}, name)
}

func newTokenREST(t *testing.T) (*TokenREST, *satoken.Authenticator) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := satoken.NewIssuer(k, satoken.DefaultIssuer)
	if err != nil {
		t.Fatal(err)
	}
	sas := getter{
		"app/web":     &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web", UID: "sa-1"}},
		"app/default": &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "default", UID: "sa-0"}},
	}
	pods := getter{"app/web-0": &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web-0", UID: "pod-1"},
		Spec: corev1.PodSpec{ServiceAccountName: "web", NodeName: "n1"}}}
	nodes := getter{"/n1": &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "node-1"}}}
	secrets := getter{"app/tok": &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "tok", UID: "sec-1"}}}
	r := &TokenREST{sas: sas, secrets: secrets, opts: TokenOptions{Issuer: iss, Audiences: []string{satoken.DefaultIssuer},
		Pods: func() rest.Getter { return pods }, Nodes: func() rest.Getter { return nodes }, MaxExpiration: 48 * time.Hour}}
	lookup := &lookupGetters{sas: sas, pods: pods, secrets: secrets}
	return r, satoken.NewAuthenticator(&k.PublicKey, satoken.DefaultIssuer, []string{satoken.DefaultIssuer}, lookup)
}

type lookupGetters struct{ sas, pods, secrets getter }

func (l *lookupGetters) ctx(ns string) context.Context {
	return genericapirequest.WithNamespace(context.Background(), ns)
}

func (l *lookupGetters) ServiceAccount(_ context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	o, err := l.sas.Get(l.ctx(ns), name, nil)
	if err != nil {
		return nil, err
	}
	return o.(*corev1.ServiceAccount), nil
}

func (l *lookupGetters) Pod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	o, err := l.pods.Get(l.ctx(ns), name, nil)
	if err != nil {
		return nil, err
	}
	return o.(*corev1.Pod), nil
}

func (l *lookupGetters) Secret(_ context.Context, ns, name string) (*corev1.Secret, error) {
	o, err := l.secrets.Get(l.ctx(ns), name, nil)
	if err != nil {
		return nil, err
	}
	return o.(*corev1.Secret), nil
}

func TestTokenRequest(t *testing.T) {
	ctx := genericapirequest.WithNamespace(context.Background(), "app")
	podRef := func(uid string) *authenticationv1.BoundObjectReference {
		return &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: "web-0", UID: types.UID(uid)}
	}
	for _, tc := range []struct {
		name      string
		sa        string
		spec      authenticationv1.TokenRequestSpec
		meta      metav1.ObjectMeta
		wantErr   string
		wantCheck func(*testing.T, *authenticationv1.TokenRequest, *satoken.Claims)
	}{
		{name: "defaults: an hour, the API's audience", sa: "web", wantCheck: func(t *testing.T, out *authenticationv1.TokenRequest, c *satoken.Claims) {
			if *out.Spec.ExpirationSeconds != 3600 || len(out.Spec.Audiences) != 1 || out.Spec.Audiences[0] != satoken.DefaultIssuer {
				t.Errorf("spec %+v", out.Spec)
			}
			if d := time.Until(out.Status.ExpirationTimestamp.Time); d < 59*time.Minute || d > time.Hour {
				t.Errorf("expires in %v", d)
			}
			if out.Name != "web" || out.Namespace != "app" || out.UID != "sa-1" {
				t.Errorf("meta %+v", out.ObjectMeta)
			}
			if c.Kubernetes.Pod != nil {
				t.Errorf("bound to a pod: %+v", c.Kubernetes.Pod)
			}
		}},
		{name: "bound to a pod, with its node", sa: "web", spec: authenticationv1.TokenRequestSpec{BoundObjectRef: podRef("pod-1"), ExpirationSeconds: ptr.To[int64](600)},
			wantCheck: func(t *testing.T, _ *authenticationv1.TokenRequest, c *satoken.Claims) {
				if c.Kubernetes.Pod == nil || c.Kubernetes.Pod.UID != "pod-1" || c.Kubernetes.Node == nil || c.Kubernetes.Node.UID != "node-1" {
					t.Errorf("claims %+v", c.Kubernetes)
				}
			}},
		{name: "a kube-api-access token lives a year, warns after an hour", sa: "web",
			spec: authenticationv1.TokenRequestSpec{BoundObjectRef: podRef(""), ExpirationSeconds: ptr.To[int64](WarnOnlyExpirationSeconds)},
			wantCheck: func(t *testing.T, out *authenticationv1.TokenRequest, c *satoken.Claims) {
				if time.Until(c.ExpiresAt.Time) < 360*24*time.Hour || c.Kubernetes.WarnAfter == nil {
					t.Errorf("exp %v warnafter %v", c.ExpiresAt, c.Kubernetes.WarnAfter)
				}
				if time.Until(out.Status.ExpirationTimestamp.Time) > 2*time.Hour {
					t.Errorf("status says it expires %v", out.Status.ExpirationTimestamp)
				}
			}},
		{name: "bound to a secret", sa: "web", spec: authenticationv1.TokenRequestSpec{BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: "tok"}},
			wantCheck: func(t *testing.T, _ *authenticationv1.TokenRequest, c *satoken.Claims) {
				if c.Kubernetes.Secret == nil || c.Kubernetes.Secret.UID != "sec-1" {
					t.Errorf("claims %+v", c.Kubernetes)
				}
			}},
		{name: "capped", sa: "web", spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](7 * 24 * 3600)},
			wantCheck: func(t *testing.T, out *authenticationv1.TokenRequest, _ *satoken.Claims) {
				if *out.Spec.ExpirationSeconds != 48*3600 {
					t.Errorf("expirationSeconds %d, want the 48h cap", *out.Spec.ExpirationSeconds)
				}
			}},
		{name: "no such account", sa: "ghost", wantErr: `"ghost" not found`},
		{name: "too short", sa: "web", spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](60)},
			wantErr: "spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"},
		{name: "name mismatch", sa: "web", meta: metav1.ObjectMeta{Name: "other"}, wantErr: "metadata.name: Invalid value: \"other\": must match the service account name"},
		{name: "pod of another account", sa: "default", spec: authenticationv1.TokenRequestSpec{BoundObjectRef: podRef("")},
			wantErr: `cannot bind token for serviceaccount "default" to pod running with different serviceaccount name`},
		{name: "pod uid mismatch", sa: "web", spec: authenticationv1.TokenRequestSpec{BoundObjectRef: podRef("pod-0")},
			wantErr: "the UID in the bound object reference (pod-0) does not match"},
		{name: "unsupported binding", sa: "web", spec: authenticationv1.TokenRequestSpec{BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Deployment", APIVersion: "apps/v1", Name: "x"}},
			wantErr: "cannot bind token to object of type apps/v1, Kind=Deployment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, auth := newTokenREST(t)
			obj, err := r.Create(ctx, tc.sa, &authenticationv1.TokenRequest{ObjectMeta: tc.meta, Spec: tc.spec}, nil, &metav1.CreateOptions{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			out := obj.(*authenticationv1.TokenRequest)
			resp, ok, err := auth.AuthenticateToken(context.Background(), out.Status.Token)
			if err != nil || !ok || resp.User.GetName() != "system:serviceaccount:app:"+tc.sa {
				t.Fatalf("the token does not authenticate: %v %v", ok, err)
			}
			var c satoken.Claims
			if _, _, err := jwt.NewParser().ParseUnverified(out.Status.Token, &c); err != nil {
				t.Fatal(err)
			}
			tc.wantCheck(t, out, &c)
		})
	}
}

func TestTokenRequestRunsAdmission(t *testing.T) {
	r, _ := newTokenREST(t)
	ctx := genericapirequest.WithNamespace(context.Background(), "app")
	refuse := func(context.Context, runtime.Object) error {
		return apierrors.NewForbidden(schema.GroupResource{Resource: "serviceaccounts"}, "web", errString("no"))
	}
	if _, err := r.Create(ctx, "web", &authenticationv1.TokenRequest{}, refuse, nil); !apierrors.IsForbidden(err) {
		t.Errorf("err = %v, want admission's Forbidden", err)
	}
}

type errString string

func (e errString) Error() string { return string(e) }
