package podconfig

import (
	"context"
	"fmt"
	"slices"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/warning"

	"github.com/duet-net/duet/internal/satoken"
)

// Token lifetimes, as Kubernetes has them.
const (
	// DefaultTokenExpiration is a TokenRequest's when it names none.
	DefaultTokenExpiration = time.Hour
	// MinTokenExpiration is the shortest a TokenRequest may ask for.
	MinTokenExpiration = 10 * time.Minute
	// WarnOnlyExpirationSeconds is what kube-api-access volumes ask for:
	// such a token bound to a pod is issued for ExtendedExpiration
	// instead, with a warnafter claim at the hour, so that clients that
	// never re-read the file keep working.
	WarnOnlyExpirationSeconds = 3607
	ExtendedExpiration        = 365 * 24 * time.Hour
)

// TokenOptions makes NewStorage serve serviceaccounts/token.
type TokenOptions struct {
	Issuer *satoken.Issuer
	// Audiences are the API server's: a request naming none gets them.
	Audiences []string
	// Pods and Nodes read the objects tokens are bound to (called at
	// request time: those stores are built elsewhere).
	Pods, Nodes func() rest.Getter
	// MaxExpiration caps requests (0: no cap beyond 2^32 seconds).
	MaxExpiration time.Duration
}

// TokenREST is the serviceaccounts/token subresource: a create issues a
// token for the ServiceAccount, optionally bound to a pod or a Secret.
type TokenREST struct {
	sas, secrets rest.Getter
	opts         TokenOptions
}

var (
	_ rest.NamedCreater             = (*TokenREST)(nil)
	_ rest.GroupVersionKindProvider = (*TokenREST)(nil)
)

func (r *TokenREST) New() runtime.Object { return &authenticationv1.TokenRequest{} }
func (r *TokenREST) Destroy()            {}

// GroupVersionKind tells the server the request body is an
// authentication.k8s.io/v1 TokenRequest.
func (r *TokenREST) GroupVersionKind(schema.GroupVersion) schema.GroupVersionKind {
	return authenticationv1.SchemeGroupVersion.WithKind("TokenRequest")
}

var tokenRequestKind = authenticationv1.SchemeGroupVersion.WithKind("TokenRequest").GroupKind()

// Create issues the token.
func (r *TokenREST) Create(ctx context.Context, name string, obj runtime.Object, createValidation rest.ValidateObjectFunc, _ *metav1.CreateOptions) (runtime.Object, error) {
	req, ok := obj.(*authenticationv1.TokenRequest)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a TokenRequest: %T", obj))
	}
	ns, ok := genericapirequest.NamespaceFrom(ctx)
	if !ok || ns == "" {
		return nil, apierrors.NewBadRequest("namespace is required")
	}
	if req.Name != "" && req.Name != name {
		return nil, apierrors.NewInvalid(tokenRequestKind, name, field.ErrorList{field.Invalid(field.NewPath("metadata", "name"), req.Name, "must match the service account name if specified")})
	}
	if req.Namespace != "" && req.Namespace != ns {
		return nil, apierrors.NewInvalid(tokenRequestKind, name, field.ErrorList{field.Invalid(field.NewPath("metadata", "namespace"), req.Namespace, "must match the service account namespace if specified")})
	}
	obj, err := r.sas.Get(ctx, name, &metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	sa := obj.(*corev1.ServiceAccount)
	if req.UID != "" && req.UID != sa.UID {
		return nil, apierrors.NewConflict(schema.GroupResource{Group: authenticationv1.GroupName, Resource: "TokenRequest"}, name,
			fmt.Errorf("the UID in the token request (%s) does not match the UID of the service account (%s)", req.UID, sa.UID))
	}
	req.Name, req.Namespace, req.UID = sa.Name, sa.Namespace, sa.UID
	if len(req.Spec.Audiences) == 0 {
		req.Spec.Audiences = slices.Clone(r.opts.Audiences)
	}
	if req.Spec.ExpirationSeconds == nil {
		s := int64(DefaultTokenExpiration / time.Second)
		req.Spec.ExpirationSeconds = &s
	}
	now := time.Now()
	req.CreationTimestamp = metav1.NewTime(now)
	req.Status = authenticationv1.TokenRequestStatus{}
	if errs := validateTokenRequest(req); len(errs) > 0 {
		return nil, apierrors.NewInvalid(tokenRequestKind, "", errs)
	}
	if createValidation != nil {
		if err := createValidation(ctx, req.DeepCopyObject()); err != nil {
			return nil, err
		}
	}

	issue := satoken.Request{ServiceAccount: sa, Audiences: req.Spec.Audiences}
	if ref := req.Spec.BoundObjectRef; ref != nil {
		if err := r.bind(ctx, name, ref, &issue); err != nil {
			return nil, err
		}
	}
	exp := time.Duration(*req.Spec.ExpirationSeconds) * time.Second
	if r.opts.MaxExpiration > 0 && exp > r.opts.MaxExpiration {
		warning.AddWarning(ctx, "", fmt.Sprintf("requested expiration of %d seconds shortened to %d seconds", *req.Spec.ExpirationSeconds, int64(r.opts.MaxExpiration/time.Second)))
		exp = r.opts.MaxExpiration
		s := int64(exp / time.Second)
		req.Spec.ExpirationSeconds = &s
	}
	issue.Expiration = exp
	if issue.Pod != nil && *req.Spec.ExpirationSeconds == WarnOnlyExpirationSeconds && r.apiAudiences(req.Spec.Audiences) {
		issue.WarnAfter, issue.Expiration = exp, ExtendedExpiration
	}
	token, _, err := r.opts.Issuer.Issue(issue)
	if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	out := req.DeepCopy()
	// The expiry clients see is the one they asked for, even when the
	// token itself lives longer (warnafter).
	out.Status = authenticationv1.TokenRequestStatus{Token: token, ExpirationTimestamp: metav1.NewTime(now.Add(exp))}
	return out, nil
}

// apiAudiences reports whether auds are all the API server's own.
func (r *TokenREST) apiAudiences(auds []string) bool {
	for _, a := range auds {
		if !slices.Contains(r.opts.Audiences, a) {
			return false
		}
	}
	return true
}

// bind checks the object a token is to be bound to and records it in
// issue.
func (r *TokenREST) bind(ctx context.Context, saName string, ref *authenticationv1.BoundObjectReference, issue *satoken.Request) error {
	gvk := schema.FromAPIVersionAndKind(ref.APIVersion, ref.Kind)
	var uid string
	switch {
	case gvk.Group == "" && gvk.Kind == "Pod":
		obj, err := r.opts.Pods().Get(ctx, ref.Name, &metav1.GetOptions{})
		if err != nil {
			return err
		}
		pod := obj.(*corev1.Pod)
		if pod.Spec.ServiceAccountName != saName {
			return apierrors.NewBadRequest(fmt.Sprintf("cannot bind token for serviceaccount %q to pod running with different serviceaccount name.", saName))
		}
		issue.Pod, uid = pod, string(pod.UID)
		if node := pod.Spec.NodeName; node != "" {
			issue.Node = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}
			nctx := genericapirequest.WithNamespace(ctx, metav1.NamespaceNone)
			if obj, err := r.opts.Nodes().Get(nctx, node, &metav1.GetOptions{ResourceVersion: "0"}); err == nil {
				issue.Node = obj.(*corev1.Node)
			}
		}
	case gvk.Group == "" && gvk.Kind == "Secret":
		obj, err := r.secrets.Get(ctx, ref.Name, &metav1.GetOptions{})
		if err != nil {
			return err
		}
		issue.Secret = obj.(*corev1.Secret)
		uid = string(issue.Secret.UID)
	default:
		return apierrors.NewBadRequest(fmt.Sprintf("cannot bind token to object of type %s", gvk.String()))
	}
	if ref.UID != "" && string(ref.UID) != uid {
		return apierrors.NewConflict(schema.GroupResource{Group: gvk.Group, Resource: gvk.Kind}, ref.Name,
			fmt.Errorf("the UID in the bound object reference (%s) does not match the UID in record. The object might have been deleted and then recreated", ref.UID))
	}
	return nil
}

func validateTokenRequest(req *authenticationv1.TokenRequest) field.ErrorList {
	var errs field.ErrorList
	p := field.NewPath("spec", "expirationSeconds")
	if s := *req.Spec.ExpirationSeconds; s < int64(MinTokenExpiration/time.Second) {
		errs = append(errs, field.Invalid(p, s, "may not specify a duration less than 10 minutes"))
	} else if s > 1<<32 {
		errs = append(errs, field.Invalid(p, s, "may not specify a duration larger than 2^32 seconds"))
	}
	for i, a := range req.Spec.Audiences {
		if a == "" {
			errs = append(errs, field.Invalid(field.NewPath("spec", "audiences").Index(i), a, "may not be empty"))
		}
	}
	if ref := req.Spec.BoundObjectRef; ref != nil && ref.Name == "" {
		errs = append(errs, field.Required(field.NewPath("spec", "boundObjectRef", "name"), "the name of the object the token is bound to"))
	}
	return errs
}
