package apiserver

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"

	"github.com/duet-net/duet/internal/registry/podconfig"
	"github.com/duet-net/duet/internal/satoken"
)

// storageLookup reads what ServiceAccount tokens name from the registries:
// the watch cache first, etcd when the cache does not have it (an object
// created a moment ago). It is bound to the stores once they exist.
type storageLookup struct{ s *Server }

var _ satoken.Lookup = storageLookup{}

func (l storageLookup) get(ctx context.Context, resource, namespace, name string) (any, error) {
	st, ok := l.s.coreStorage[resource].(rest.Getter)
	if !ok {
		return nil, fmt.Errorf("no %s storage", resource)
	}
	ctx = genericapirequest.WithNamespace(ctx, namespace)
	obj, err := st.Get(ctx, name, &metav1.GetOptions{ResourceVersion: "0"})
	if apierrors.IsNotFound(err) {
		obj, err = st.Get(ctx, name, &metav1.GetOptions{})
	}
	return obj, err
}

func (l storageLookup) ServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	obj, err := l.get(ctx, podconfig.ServiceAccounts, namespace, name)
	if err != nil {
		return nil, err
	}
	return obj.(*corev1.ServiceAccount), nil
}

func (l storageLookup) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	obj, err := l.get(ctx, "pods", namespace, name)
	if err != nil {
		return nil, err
	}
	return obj.(*corev1.Pod), nil
}

func (l storageLookup) Secret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	obj, err := l.get(ctx, podconfig.Secrets, namespace, name)
	if err != nil {
		return nil, err
	}
	return obj.(*corev1.Secret), nil
}

// tokenOptions are the serviceaccounts/token subresource's.
func (s *Server) tokenOptions() *podconfig.TokenOptions {
	return &podconfig.TokenOptions{
		Issuer:    s.tokenIssuer,
		Audiences: []string{satoken.DefaultIssuer},
		Pods:      func() rest.Getter { return s.coreStorage["pods"].(rest.Getter) },
		Nodes:     func() rest.Getter { return s.coreStorage["nodes"].(rest.Getter) },
	}
}
