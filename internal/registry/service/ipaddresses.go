package service

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/netaddr"
)

// Labels Kubernetes puts on the IPAddress objects its allocator creates.
const (
	LabelIPFamily  = "ipaddress.kubernetes.io/ip-family"
	LabelManagedBy = "ipaddress.kubernetes.io/managed-by"
	ManagedBy      = "ipallocator.k8s.io"
)

// IPAddressStorage is what IPAddressStore needs of the ipaddresses registry.
type IPAddressStorage interface {
	rest.Creater
	rest.GracefulDeleter
	rest.Lister
	rest.Getter
}

// IPAddressStore keeps cluster IP allocations as networking.k8s.io/v1
// IPAddress objects, named by the IP, created only if absent. etcd refuses
// a second object of one name, so two API server replicas can never hand
// out one IP twice, and the objects say which Service owns each IP.
type IPAddressStore struct {
	Storage IPAddressStorage
}

var _ alloc.Store = &IPAddressStore{}

func clusterScoped(ctx context.Context) context.Context {
	return genericapirequest.WithNamespace(ctx, metav1.NamespaceNone)
}

func (s *IPAddressStore) Create(ctx context.Context, key netip.Prefix) error {
	owner, ok := alloc.OwnerFrom(ctx)
	if !ok {
		return fmt.Errorf("recording %s: no owning object", key.Addr())
	}
	ip := &networkingv1.IPAddress{
		ObjectMeta: metav1.ObjectMeta{
			Name: key.Addr().String(),
			Labels: map[string]string{
				LabelIPFamily:  string(netaddr.FamilyOf(key.Addr())),
				LabelManagedBy: ManagedBy,
			},
		},
		Spec: networkingv1.IPAddressSpec{ParentRef: &networkingv1.ParentReference{
			Group: owner.Group, Resource: owner.Resource, Namespace: owner.Namespace, Name: owner.Name,
		}},
	}
	_, err := s.Storage.Create(clusterScoped(ctx), ip, rest.ValidateAllObjectFunc, &metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return &alloc.AllocatedError{What: key.Addr().String()}
	}
	if err != nil {
		return fmt.Errorf("creating IPAddress %s: %w", key.Addr(), err)
	}
	return nil
}

func (s *IPAddressStore) Delete(ctx context.Context, key netip.Prefix) error {
	_, _, err := s.Storage.Delete(clusterScoped(ctx), key.Addr().String(), rest.ValidateAllObjectFunc, &metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting IPAddress %s: %w", key.Addr(), err)
	}
	return nil
}

func (s *IPAddressStore) List(ctx context.Context, within netip.Prefix, fn func(netip.Prefix) error) error {
	ips, err := s.ListAll(ctx)
	if err != nil {
		return err
	}
	for _, ip := range ips {
		a, err := netip.ParseAddr(ip.Name)
		if err != nil || !within.Contains(a) {
			continue
		}
		if err := fn(netip.PrefixFrom(a, a.BitLen())); err != nil {
			return err
		}
	}
	return nil
}

// ListAll returns every IPAddress object.
func (s *IPAddressStore) ListAll(ctx context.Context) ([]networkingv1.IPAddress, error) {
	obj, err := s.Storage.List(clusterScoped(ctx), &metainternalversion.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing IPAddresses: %w", err)
	}
	list, ok := obj.(*networkingv1.IPAddressList)
	if !ok {
		return nil, errors.New("listing IPAddresses: unexpected list type")
	}
	return list.Items, nil
}
