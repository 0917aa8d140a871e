//lint:file-ignore SA1019 spec.serviceAccount is the deprecated alias that old clients still send and read.

// Package serviceaccount is Duet's ServiceAccount admission plugin, with
// Kubernetes' behaviour and messages for pods being created:
//
//   - a pod that names no ServiceAccount runs as `default`
//     (spec.serviceAccountName, and spec.serviceAccount, its deprecated
//     alias, which takes the same value);
//   - a pod whose ServiceAccount does not exist is refused with Forbidden
//     (error looking up service account NS/NAME: serviceaccount "NAME"
//     not found). `default` is looked for a little longer, since the
//     controller that creates it may be a moment behind a new Namespace;
//   - a pod that names no image pull secrets gets its ServiceAccount's;
//   - with a TokenVolume, a pod that automounts (the pod's
//     automountServiceAccountToken, else its ServiceAccount's, else true)
//     gets the projected `kube-api-access-*` volume, mounted read-only at
//     /var/run/secrets/kubernetes.io/serviceaccount in every container;
//   - mirror pods (of a node's static pods) get none of this and may not
//     name a ServiceAccount or reference Secrets.
//
// Updates, other resources and subresources are let through.
package serviceaccount

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/admission"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"

	"github.com/duet-net/duet/internal/podrefs"
)

// PluginName is Kubernetes' name for the plugin.
const PluginName = "ServiceAccount"

// DefaultServiceAccount is the ServiceAccount of pods that name none.
const DefaultServiceAccount = "default"

// Getter reads a ServiceAccount; a missing one is a NotFound error.
type Getter func(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error)

// FromStorage returns a Getter over the ServiceAccount registry's storage:
// the watch cache first, etcd when the cache does not have it yet (a
// ServiceAccount created a moment ago).
func FromStorage(sas rest.Getter) Getter {
	return func(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
		ctx = genericapirequest.WithNamespace(ctx, namespace)
		obj, err := sas.Get(ctx, name, &metav1.GetOptions{ResourceVersion: "0"})
		if apierrors.IsNotFound(err) {
			obj, err = sas.Get(ctx, name, &metav1.GetOptions{})
		}
		if err != nil {
			return nil, err
		}
		sa, ok := obj.(*corev1.ServiceAccount)
		if !ok {
			return nil, fmt.Errorf("ServiceAccount storage returned %T", obj)
		}
		return sa, nil
	}
}

// Plugin is the admission plugin.
type Plugin struct {
	*admission.Handler
	get Getter
	// defaultWait is how long the default ServiceAccount is waited for.
	defaultWait time.Duration
	// token, if set, adds the projected token volume.
	token *TokenVolume
}

var (
	_ admission.MutationInterface   = (*Plugin)(nil)
	_ admission.ValidationInterface = (*Plugin)(nil)
)

// New returns the plugin, reading ServiceAccounts through get; token, if
// not nil, makes it mount API credentials into pods.
func New(get Getter, token *TokenVolume) *Plugin {
	return &Plugin{Handler: admission.NewHandler(admission.Create), get: get, defaultWait: 3 * time.Second, token: token}
}

var podsResource = schema.GroupResource{Resource: "pods"}

// pod returns the pod a request creates, or nil if the plugin has nothing
// to say about the request.
func pod(a admission.Attributes) *corev1.Pod {
	if a.GetResource().GroupResource() != podsResource || a.GetSubresource() != "" || a.GetOperation() != admission.Create {
		return nil
	}
	p, _ := a.GetObject().(*corev1.Pod)
	return p
}

func isMirror(p *corev1.Pod) bool {
	_, ok := p.Annotations[corev1.MirrorPodAnnotationKey]
	return ok
}

// Admit defaults the ServiceAccount and what comes from it.
func (p *Plugin) Admit(ctx context.Context, a admission.Attributes, _ admission.ObjectInterfaces) error {
	pod := pod(a)
	if pod == nil || isMirror(pod) {
		return nil
	}
	s := &pod.Spec
	if s.ServiceAccountName == "" {
		s.ServiceAccountName = s.DeprecatedServiceAccount
	}
	if s.ServiceAccountName == "" {
		s.ServiceAccountName = DefaultServiceAccount
	}
	s.DeprecatedServiceAccount = s.ServiceAccountName
	sa, err := p.lookup(ctx, a, s.ServiceAccountName)
	if err != nil {
		return err
	}
	if len(s.ImagePullSecrets) == 0 && len(sa.ImagePullSecrets) > 0 {
		s.ImagePullSecrets = make([]corev1.LocalObjectReference, len(sa.ImagePullSecrets))
		for i, r := range sa.ImagePullSecrets {
			s.ImagePullSecrets[i] = corev1.LocalObjectReference{Name: r.Name}
		}
	}
	if p.token != nil && automount(sa, pod) {
		p.token.mount(pod)
	}
	return nil
}

// lookup finds the ServiceAccount, waiting a little for `default`.
func (p *Plugin) lookup(ctx context.Context, a admission.Attributes, name string) (*corev1.ServiceAccount, error) {
	ns := a.GetNamespace()
	sa, err := p.get(ctx, ns, name)
	if apierrors.IsNotFound(err) && name == DefaultServiceAccount && p.defaultWait > 0 {
		_ = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, p.defaultWait, false, func(ctx context.Context) (bool, error) {
			sa, err = p.get(ctx, ns, name)
			return !apierrors.IsNotFound(err), nil
		})
	}
	if err == nil && sa == nil {
		err = apierrors.NewNotFound(schema.GroupResource{Resource: "serviceaccount"}, name)
	}
	if err != nil {
		if apierrors.IsNotFound(err) {
			// Kubernetes' wording: the singular resource.
			err = apierrors.NewNotFound(schema.GroupResource{Resource: "serviceaccount"}, name)
		}
		return nil, admission.NewForbidden(a, fmt.Errorf("error looking up service account %s/%s: %w", ns, name, err))
	}
	return sa, nil
}

// Validate refuses what Admit cannot fix: mirror pods with credentials,
// and pods that name no ServiceAccount after admission.
func (p *Plugin) Validate(_ context.Context, a admission.Attributes, _ admission.ObjectInterfaces) error {
	pod := pod(a)
	if pod == nil {
		return nil
	}
	forbid := func(msg string) error { return admission.NewForbidden(a, errors.New(msg)) }
	if isMirror(pod) {
		switch {
		case pod.Spec.ServiceAccountName != "":
			return forbid("a mirror pod may not reference service accounts")
		case len(podrefs.Secrets(pod)) > 0:
			return forbid("a mirror pod may not reference secrets")
		case podrefs.HasServiceAccountToken(pod):
			return forbid("a mirror pod may not use ServiceAccountToken volume projections")
		}
		return nil
	}
	if pod.Spec.ServiceAccountName == "" {
		return forbid(fmt.Sprintf("no service account specified for pod %s/%s", a.GetNamespace(), pod.Name))
	}
	return nil
}

// automount reports whether the pod gets API credentials: the pod
// decides, else its ServiceAccount, else yes.
func automount(sa *corev1.ServiceAccount, pod *corev1.Pod) bool {
	if v := pod.Spec.AutomountServiceAccountToken; v != nil {
		return *v
	}
	if v := sa.AutomountServiceAccountToken; v != nil {
		return *v
	}
	return true
}
