//lint:file-ignore SA1019 spec.serviceAccount is the deprecated alias the plugin keeps in step.

package serviceaccount

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/utils/ptr"
)

// accounts is a fake Getter over the ServiceAccounts it holds, keyed
// "ns/name"; appear makes one exist after that many lookups.
type accounts struct {
	mu      sync.Mutex
	sas     map[string]*corev1.ServiceAccount
	err     error
	lookups int
	appear  map[string]int
}

func (f *accounts) get(_ context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	if f.err != nil {
		return nil, f.err
	}
	key := ns + "/" + name
	if n, ok := f.appear[key]; ok && f.lookups > n {
		return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, nil
	}
	if sa, ok := f.sas[key]; ok {
		return sa, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "serviceaccounts"}, name)
}

func newAccounts(sas ...*corev1.ServiceAccount) *accounts {
	f := &accounts{sas: map[string]*corev1.ServiceAccount{}, appear: map[string]int{}}
	for _, sa := range sas {
		f.sas[sa.Namespace+"/"+sa.Name] = sa
	}
	return f
}

func sa(ns, name string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}

func attrs(pod *corev1.Pod, op admission.Operation, sub string) admission.Attributes {
	var opts runtime.Object = &metav1.CreateOptions{}
	if op == admission.Update {
		opts = &metav1.UpdateOptions{}
	}
	return admission.NewAttributesRecord(pod, nil, corev1.SchemeGroupVersion.WithKind("Pod"), "ns1", pod.Name,
		corev1.SchemeGroupVersion.WithResource("pods"), sub, op, opts, false, nil)
}

// admit runs the plugin as the chain does: Admit, then Validate.
func admit(p *Plugin, a admission.Attributes) error {
	if err := p.Admit(context.Background(), a, nil); err != nil {
		return err
	}
	return p.Validate(context.Background(), a, nil)
}

func testPod() *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns1"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}, InitContainers: []corev1.Container{{Name: "i"}}}}
}

func TestAdmit(t *testing.T) {
	withPulls := sa("ns1", "builder")
	withPulls.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "registry"}}
	for _, tc := range []struct {
		name    string
		edit    func(*corev1.Pod)
		wantSA  string
		wantErr string
		check   func(*testing.T, *corev1.Pod)
	}{
		{name: "no account: default", wantSA: "default"},
		{name: "named account", edit: func(p *corev1.Pod) { p.Spec.ServiceAccountName = "builder" }, wantSA: "builder"},
		{name: "the deprecated field alone", edit: func(p *corev1.Pod) { p.Spec.DeprecatedServiceAccount = "builder" }, wantSA: "builder"},
		{name: "the new field wins", edit: func(p *corev1.Pod) {
			p.Spec.ServiceAccountName, p.Spec.DeprecatedServiceAccount = "builder", "default"
		}, wantSA: "builder"},
		{name: "missing account", edit: func(p *corev1.Pod) { p.Spec.ServiceAccountName = "ghost" },
			wantErr: `pods "p" is forbidden: error looking up service account ns1/ghost: serviceaccount "ghost" not found`},
		{name: "image pull secrets come from the account", edit: func(p *corev1.Pod) { p.Spec.ServiceAccountName = "builder" }, wantSA: "builder",
			check: func(t *testing.T, p *corev1.Pod) {
				if len(p.Spec.ImagePullSecrets) != 1 || p.Spec.ImagePullSecrets[0].Name != "registry" {
					t.Errorf("imagePullSecrets %v, want the account's", p.Spec.ImagePullSecrets)
				}
			}},
		{name: "the pod's own image pull secrets stay", wantSA: "builder", edit: func(p *corev1.Pod) {
			p.Spec.ServiceAccountName = "builder"
			p.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "mine"}}
		}, check: func(t *testing.T, p *corev1.Pod) {
			if len(p.Spec.ImagePullSecrets) != 1 || p.Spec.ImagePullSecrets[0].Name != "mine" {
				t.Errorf("imagePullSecrets %v, want the pod's own", p.Spec.ImagePullSecrets)
			}
		}},
		{name: "a mirror pod is left alone", edit: func(p *corev1.Pod) { p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "x"} }, wantSA: ""},
		{name: "a mirror pod may not name an account", edit: func(p *corev1.Pod) {
			p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "x"}
			p.Spec.ServiceAccountName = "default"
		}, wantErr: "a mirror pod may not reference service accounts"},
		{name: "a mirror pod may not reference secrets", edit: func(p *corev1.Pod) {
			p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "x"}
			p.Spec.Volumes = []corev1.Volume{{Name: "s", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "s"}}}}
		}, wantErr: "a mirror pod may not reference secrets"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := testPod()
			if tc.edit != nil {
				tc.edit(pod)
			}
			p := New(newAccounts(sa("ns1", "default"), withPulls).get, nil)
			err := admit(p, attrs(pod, admission.Create, ""))
			if tc.wantErr != "" {
				if err == nil || !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want 403 Forbidden containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if pod.Spec.ServiceAccountName != tc.wantSA || pod.Spec.DeprecatedServiceAccount != tc.wantSA {
				t.Errorf("serviceAccountName %q, serviceAccount %q, want both %q", pod.Spec.ServiceAccountName, pod.Spec.DeprecatedServiceAccount, tc.wantSA)
			}
			if len(pod.Spec.Volumes) != 0 && tc.check == nil && !strings.Contains(tc.name, "mirror") {
				t.Errorf("volumes %v added without a TokenVolume", pod.Spec.Volumes)
			}
			if tc.check != nil {
				tc.check(t, pod)
			}
		})
	}
}

// A new Namespace's default ServiceAccount may be a moment behind it: the
// plugin waits for it, and for no other.
func TestDefaultIsWaitedFor(t *testing.T) {
	f := newAccounts()
	f.appear["ns1/default"] = 3
	p := New(f.get, nil)
	if err := admit(p, attrs(testPod(), admission.Create, "")); err != nil {
		t.Fatalf("default appearing after 3 lookups: %v", err)
	}

	f = newAccounts()
	p = New(f.get, nil)
	p.defaultWait = 300 * time.Millisecond
	start := time.Now()
	err := admit(p, attrs(testPod(), admission.Create, ""))
	if err == nil || !strings.Contains(err.Error(), `error looking up service account ns1/default: serviceaccount "default" not found`) {
		t.Fatalf("err = %v, want default not found", err)
	}
	if time.Since(start) < p.defaultWait {
		t.Errorf("gave up after %v, before %v", time.Since(start), p.defaultWait)
	}

	f = newAccounts()
	f.appear["ns1/other"] = 3
	pod := testPod()
	pod.Spec.ServiceAccountName = "other"
	if err := admit(New(f.get, nil), attrs(pod, admission.Create, "")); err == nil || f.lookups != 1 {
		t.Errorf("err = %v after %d lookups, want not found after one", err, f.lookups)
	}
}

func TestLookupErrorsAreForbidden(t *testing.T) {
	f := newAccounts()
	f.err = errors.New("etcd unavailable")
	err := admit(New(f.get, nil), attrs(testPod(), admission.Create, ""))
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "error looking up service account ns1/default: etcd unavailable") {
		t.Errorf("err = %v", err)
	}
}

func TestOnlyPodCreates(t *testing.T) {
	p := New(newAccounts().get, nil)
	pod := testPod()
	pod.Spec.ServiceAccountName = "ghost"
	for _, a := range []admission.Attributes{attrs(pod, admission.Update, ""), attrs(pod, admission.Create, "binding")} {
		if err := admit(p, a); err != nil {
			t.Errorf("%s %s: %v", a.GetOperation(), a.GetSubresource(), err)
		}
	}
}

func TestTokenVolume(t *testing.T) {
	noMount := sa("ns1", "nomount")
	noMount.AutomountServiceAccountToken = ptr.To(false)
	accts := newAccounts(sa("ns1", "default"), noMount)
	tv := &TokenVolume{GenerateName: func(prefix string) string { return prefix + "abcde" }}
	for _, tc := range []struct {
		name       string
		edit       func(*corev1.Pod)
		wantVolume string
		wantMounts int
	}{
		{name: "every container gets it", wantVolume: "kube-api-access-abcde", wantMounts: 2},
		{name: "the pod opts out", edit: func(p *corev1.Pod) { p.Spec.AutomountServiceAccountToken = ptr.To(false) }},
		{name: "the account opts out", edit: func(p *corev1.Pod) { p.Spec.ServiceAccountName = "nomount" }},
		{name: "the pod overrides its account", edit: func(p *corev1.Pod) {
			p.Spec.ServiceAccountName = "nomount"
			p.Spec.AutomountServiceAccountToken = ptr.To(true)
		}, wantVolume: "kube-api-access-abcde", wantMounts: 2},
		{name: "a container with its own mount there keeps it", edit: func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mine", MountPath: TokenMountPath}}
		}, wantVolume: "kube-api-access-abcde", wantMounts: 1},
		{name: "an existing kube-api-access volume is reused", edit: func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "kube-api-access-zzzzz", VolumeSource: corev1.VolumeSource{Projected: TokenVolumeSource()}}}
		}, wantVolume: "kube-api-access-zzzzz", wantMounts: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := testPod()
			if tc.edit != nil {
				tc.edit(pod)
			}
			if err := admit(New(accts.get, tv), attrs(pod, admission.Create, "")); err != nil {
				t.Fatal(err)
			}
			var vols []string
			for _, v := range pod.Spec.Volumes {
				vols = append(vols, v.Name)
			}
			mounts := 0
			for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
				for _, m := range c.VolumeMounts {
					if m.MountPath == TokenMountPath && m.Name == tc.wantVolume && m.ReadOnly {
						mounts++
					}
				}
			}
			if tc.wantVolume == "" {
				if len(vols) != 0 || mounts != 0 {
					t.Errorf("volumes %v, want none", vols)
				}
				return
			}
			if len(vols) != 1 || vols[0] != tc.wantVolume || mounts != tc.wantMounts {
				t.Errorf("volumes %v with %d mounts, want %s mounted read-only in %d containers", vols, mounts, tc.wantVolume, tc.wantMounts)
			}
			src := pod.Spec.Volumes[0].Projected
			if src == nil || len(src.Sources) != 3 || src.Sources[0].ServiceAccountToken == nil ||
				src.Sources[1].ConfigMap == nil || src.Sources[1].ConfigMap.Name != RootCAConfigMap || src.Sources[2].DownwardAPI == nil {
				t.Errorf("volume source %+v, want token, kube-root-ca.crt and namespace", src)
			}
		})
	}
}
