// Package fakeapi makes client-go's fake clientset behave like Duet's API server
// where controllers depend on it, for the controllers' tests.
package fakeapi

import (
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
)

// ServeLikeAPIServer makes the fake clientset behave like Duet's API
// server where the controller depends on it: generateName, UIDs,
// resourceVersions on every write, optimistic concurrency on update and
// UID preconditions on delete. It leaves metadata.generation at 0, so the
// controllers' own guard against stale caches (not generation) is what
// their tests exercise. The fake runs one action at a time, so the
// check-then-write below is atomic.
func ServeLikeAPIServer(client *fake.Clientset) {
	var rv, names atomic.Int64
	rv.Store(100)
	nextRV := func() string { return strconv.FormatInt(rv.Add(1), 10) }

	client.PrependReactor("create", "*", func(a clienttesting.Action) (bool, runtime.Object, error) {
		m, err := meta.Accessor(a.(clienttesting.CreateAction).GetObject())
		if err != nil {
			return false, nil, nil
		}
		if m.GetName() == "" && m.GetGenerateName() != "" {
			m.SetName(fmt.Sprintf("%s%05d", m.GetGenerateName(), names.Add(1)))
		}
		if m.GetUID() == "" {
			m.SetUID(uuid.NewUUID())
		}
		if ts := m.GetCreationTimestamp(); ts.IsZero() {
			m.SetCreationTimestamp(metav1.Now())
		}
		m.SetResourceVersion(nextRV())
		return false, nil, nil
	})
	client.PrependReactor("update", "*", func(a clienttesting.Action) (bool, runtime.Object, error) {
		u := a.(clienttesting.UpdateAction)
		m, err := meta.Accessor(u.GetObject())
		if err != nil {
			return false, nil, nil
		}
		stored, err := client.Tracker().Get(u.GetResource(), u.GetNamespace(), m.GetName())
		if err != nil {
			return false, nil, nil // the default reaction reports it
		}
		sm, _ := meta.Accessor(stored)
		if m.GetResourceVersion() != "" && m.GetResourceVersion() != sm.GetResourceVersion() {
			return true, nil, apierrors.NewConflict(u.GetResource().GroupResource(), m.GetName(),
				errors.New("the object has been modified; please apply your changes to the latest version and try again"))
		}
		m.SetUID(sm.GetUID())
		m.SetCreationTimestamp(sm.GetCreationTimestamp())
		m.SetResourceVersion(nextRV())
		return false, nil, nil
	})
	client.PrependReactor("delete", "*", func(a clienttesting.Action) (bool, runtime.Object, error) {
		d := a.(clienttesting.DeleteAction)
		pre := d.GetDeleteOptions().Preconditions
		if pre == nil || pre.UID == nil {
			return false, nil, nil
		}
		stored, err := client.Tracker().Get(d.GetResource(), d.GetNamespace(), d.GetName())
		if err != nil {
			return false, nil, nil
		}
		if sm, _ := meta.Accessor(stored); sm.GetUID() != *pre.UID {
			return true, nil, apierrors.NewConflict(d.GetResource().GroupResource(), d.GetName(),
				fmt.Errorf("precondition failed: UID in precondition: %v, UID in object meta: %v", *pre.UID, sm.GetUID()))
		}
		return false, nil, nil
	})
}

// Watching reports whether the fake serves a watch of every one of
// resources. An informer lists before it watches, and the fake does not
// replay deletions that fall between the two (a real server does), so a
// test changes objects only once its informers are watching.
func Watching(client *fake.Clientset, resources ...string) bool {
	seen := map[string]bool{}
	for _, a := range client.Actions() {
		if a.GetVerb() == "watch" {
			seen[a.GetResource().Resource] = true
		}
	}
	for _, r := range resources {
		if !seen[r] {
			return false
		}
	}
	return true
}

// Writes counts the creates, updates, patches and deletes of resource
// the fake has served since its actions were last cleared.
func Writes(client *fake.Clientset, resource string) int {
	n := 0
	for _, a := range client.Actions() {
		switch a.GetVerb() {
		case "create", "update", "patch", "delete":
			if a.GetResource().Resource == resource {
				n++
			}
		}
	}
	return n
}
