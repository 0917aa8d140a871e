package objwatch

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

// counter counts notifications and lets a test wait for the next one.
type counter struct {
	n  atomic.Int32
	ch chan struct{}
}

func newCounter() *counter { return &counter{ch: make(chan struct{}, 100)} }

func (c *counter) notify() {
	c.n.Add(1)
	c.ch <- struct{}{}
}

func (c *counter) next(t *testing.T, what string) {
	t.Helper()
	select {
	case <-c.ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("no notification within 10 s: %s", what)
	}
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func configMap(name, v string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"}, Data: map[string]string{"k": v}}
}

func cmValue(w *Watcher, name string) (string, error) {
	cm, known := w.ConfigMap("ns", name)
	switch {
	case !known:
		return "", fmt.Errorf("configMap %s not known yet", name)
	case cm == nil:
		return "<none>", nil
	}
	return cm.Data["k"], nil
}

// A registration hears of its ConfigMap's first listing, changes and
// deletion and reads it from the watch; another object of the namespace
// (which a fake server does not filter out) says nothing; the list and
// watch name the object, as a node identity must.
func TestWatchConfigMap(t *testing.T) {
	client := fake.NewClientset(configMap("app", "v1"))
	w := &Watcher{Client: client}
	c := newCounter()
	cancel := w.Watch([]Ref{{ConfigMaps, "ns", "app"}}, c.notify)
	defer cancel()
	c.next(t, "the first listing")
	if v, err := cmValue(w, "app"); err != nil || v != "v1" {
		t.Fatalf("read %q, %v; want v1", v, err)
	}

	ctx := context.Background()
	cms := client.CoreV1().ConfigMaps("ns")
	if _, err := cms.Create(ctx, configMap("other", "x"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cms.Update(ctx, configMap("app", "v2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.next(t, "the update")
	if v, err := cmValue(w, "app"); err != nil || v != "v2" {
		t.Errorf("after the update read %q, %v; want v2", v, err)
	}
	if err := cms.Delete(ctx, "app", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.next(t, "the deletion")
	if v, err := cmValue(w, "app"); err != nil || v != "<none>" {
		t.Errorf("after the deletion read %q, %v; want none", v, err)
	}
	if n := c.n.Load(); n != 3 {
		t.Errorf("%d notifications, want 3 (listing, update, deletion; none for another ConfigMap)", n)
	}
	if _, known := w.ConfigMap("ns", "other"); known {
		t.Error("an object no one registered is known")
	}

	for _, a := range client.Actions() {
		if a.GetResource().Resource != "configmaps" || a.GetVerb() != "list" && a.GetVerb() != "watch" {
			continue
		}
		var fs string
		switch a := a.(type) {
		case k8stesting.ListAction:
			fs = a.GetListRestrictions().Fields.String()
		case k8stesting.WatchAction:
			fs = a.GetWatchRestrictions().Fields.String()
		}
		if fs != "metadata.name=app" {
			t.Errorf("%s with field selector %q, want metadata.name=app", a.GetVerb(), fs)
		}
	}
}

// An optional Secret that is not there yet is known not to exist, then
// appears when created.
func TestWatchSecretAppears(t *testing.T) {
	client := fake.NewClientset()
	w := &Watcher{Client: client}
	c := newCounter()
	defer w.Watch([]Ref{{Secrets, "ns", "s"}}, c.notify)()
	eventually(t, "the Secret's absence known", func() error {
		if sec, known := w.Secret("ns", "s"); !known || sec != nil {
			return fmt.Errorf("known %v, %v", known, sec)
		}
		return nil
	})
	if _, err := client.CoreV1().Secrets("ns").Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "ns"}, Data: map[string][]byte{"k": []byte("pw")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.next(t, "the creation")
	if sec, known := w.Secret("ns", "s"); !known || sec == nil || string(sec.Data["k"]) != "pw" {
		t.Errorf("after the creation read %v (known %v)", sec, known)
	}
}

// Registrations share one watch per object, which stops with the last.
func TestWatchShared(t *testing.T) {
	client := fake.NewClientset(configMap("app", "v1"))
	w := &Watcher{Client: client}
	ref := Ref{ConfigMaps, "ns", "app"}
	a, b := newCounter(), newCounter()
	cancelA := w.Watch([]Ref{ref}, a.notify)
	cancelB := w.Watch([]Ref{ref, ref}, b.notify)
	a.next(t, "a's first listing")
	if _, err := client.CoreV1().ConfigMaps("ns").Update(context.Background(), configMap("app", "v2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	b.next(t, "b hears of the update")
	lists := 0
	for _, act := range client.Actions() {
		if act.GetVerb() == "list" {
			lists++
		}
	}
	if lists != 1 {
		t.Errorf("%d lists, want one watch for both", lists)
	}
	cancelA()
	cancelA()
	if !w.Watching(ref) {
		t.Error("the watch stopped while b uses it")
	}
	cancelB()
	if w.Watching(ref) {
		t.Error("the watch runs with no one using it")
	}
	if _, known := w.ConfigMap("ns", "app"); known {
		t.Error("an object no longer watched is still known")
	}
}

// An immutable ConfigMap is read once: its watch stops, and its content
// stays as it was seen.
func TestWatchImmutable(t *testing.T) {
	cm := configMap("frozen", "v1")
	cm.Immutable = ptr.To(true)
	client := fake.NewClientset(cm)
	w := &Watcher{Client: client}
	ref := Ref{ConfigMaps, "ns", "frozen"}
	c := newCounter()
	defer w.Watch([]Ref{ref}, c.notify)()
	c.next(t, "the first listing")
	if w.Watching(ref) {
		t.Error("an immutable ConfigMap is still watched")
	}
	// The API refuses this; a fake takes it, and nothing may read it.
	changed := configMap("frozen", "v2")
	changed.Immutable = ptr.To(true)
	if _, err := client.CoreV1().ConfigMaps("ns").Update(context.Background(), changed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if v, err := cmValue(w, "frozen"); err != nil || v != "v1" {
		t.Errorf("read %q, %v; want v1 as first seen", v, err)
	}
}
