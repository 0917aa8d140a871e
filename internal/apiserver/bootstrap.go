package apiserver

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/duet-net/duet/internal/controller/kubedns"
	"github.com/duet-net/duet/internal/controller/nsdefaults"
	"github.com/duet-net/duet/internal/netaddr"
)

// systemNamespaces exist in every cluster.
var systemNamespaces = []string{metav1.NamespaceDefault, metav1.NamespaceSystem, metav1.NamespacePublic, corev1.NamespaceNodeLease}

// bootstrap creates what every cluster has. It is idempotent: replicas and
// restarts run it again.
func (s *Server) bootstrap(ctx context.Context, loopback *rest.Config) error {
	client, err := kubernetes.NewForConfig(loopback)
	if err != nil {
		return err
	}
	for _, name := range systemNamespaces {
		_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating namespace %s: %w", name, err)
		}
		// The controller would create it too, but only once elected:
		// pods created the moment the server is ready need it now.
		_, err = client.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: nsdefaults.DefaultServiceAccount}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating the default ServiceAccount of namespace %s: %w", name, err)
		}
	}
	if err := s.ensureKubernetesService(ctx, client); err != nil {
		return err
	}
	// The cluster DNS Service, so that the first pods already find it.
	return kubedns.Ensure(ctx, client, s.cfg.ServiceRanges)
}

// ensureKubernetesService creates default/kubernetes, with the first
// usable address of the primary service range, before the server reports
// ready; from then on kubernetesService keeps it.
func (s *Server) ensureKubernetesService(ctx context.Context, client kubernetes.Interface) error {
	primary := netaddr.FamilyOf(s.cfg.ServiceRanges[0].Addr())
	k := &kubernetesService{client: client, ip: s.serviceRanges[primary].KubernetesServiceIP(), families: []corev1.IPFamily{corev1.IPFamily(primary)}}
	return k.createService(ctx, s.port)
}
