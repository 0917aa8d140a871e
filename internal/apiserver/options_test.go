package apiserver

import (
	"net/url"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

func TestPodOptionsDecoding(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	since := metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	for _, tc := range []struct {
		name    string
		query   string
		into    runtime.Object
		want    runtime.Object
		wantErr bool
	}{
		{"exec", "command=sh&command=-c&command=exit+3&container=c&stdin=true&stdout=1&stderr=false&tty=0",
			&corev1.PodExecOptions{}, &corev1.PodExecOptions{Command: []string{"sh", "-c", "exit 3"}, Container: "c", Stdin: true, Stdout: true}, false},
		{"attach", "stdout=true&tty=true", &corev1.PodAttachOptions{}, &corev1.PodAttachOptions{Stdout: true, TTY: true}, false},
		{"port-forward", "ports=80&ports=9000", &corev1.PodPortForwardOptions{}, &corev1.PodPortForwardOptions{Ports: []int32{80, 9000}}, false},
		{"port-forward out of range", "ports=70000", &corev1.PodPortForwardOptions{}, nil, true},
		{"port-forward not a number", "ports=http", &corev1.PodPortForwardOptions{}, nil, true},
		{"log", "container=c&follow=true&previous=true&timestamps=true&tailLines=10&limitBytes=5&sinceSeconds=60",
			&corev1.PodLogOptions{}, &corev1.PodLogOptions{Container: "c", Follow: true, Previous: true, Timestamps: true, TailLines: i64(10), LimitBytes: i64(5), SinceSeconds: i64(60)}, false},
		{"log sinceTime", "sinceTime=2026-01-02T03:04:05Z", &corev1.PodLogOptions{}, &corev1.PodLogOptions{SinceTime: &since}, false},
		{"log bad tailLines", "tailLines=many", &corev1.PodLogOptions{}, nil, true},
		{"log bad sinceTime", "sinceTime=yesterday", &corev1.PodLogOptions{}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, err := url.ParseQuery(tc.query)
			if err != nil {
				t.Fatal(err)
			}
			err = ParameterCodec.DecodeParameters(q, corev1.SchemeGroupVersion, tc.into)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("decoded %q into %+v, want an error", tc.query, tc.into)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !apiequality.Semantic.DeepEqual(tc.into, tc.want) {
				t.Errorf("decoded %+v, want %+v", tc.into, tc.want)
			}
		})
	}
}

// FuzzPodOptionsDecoding: any query decodes or fails with an error, never a
// panic, and what decodes encodes back to the same options, but for what
// apimachinery's query encoding leaves out (see encodable).
func FuzzPodOptionsDecoding(f *testing.F) {
	for _, s := range []string{"command=ls&stdout=1", "ports=80&ports=x", "tailLines=-1&sinceTime=2026-01-02T03:04:05Z", "follow=maybe", "%zz", "sinceTime=2026-01-02T03:04:05.5%2B01:00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, query string) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		for _, into := range []runtime.Object{&corev1.PodExecOptions{}, &corev1.PodAttachOptions{}, &corev1.PodPortForwardOptions{}, &corev1.PodLogOptions{}} {
			if err := ParameterCodec.DecodeParameters(q, corev1.SchemeGroupVersion, into); err != nil {
				continue
			}
			enc, err := ParameterCodec.EncodeParameters(into, corev1.SchemeGroupVersion)
			if err != nil {
				t.Fatalf("%T %+v decoded from %q does not encode: %v", into, into, query, err)
			}
			again := reflect.New(reflect.TypeOf(into).Elem()).Interface().(runtime.Object)
			if err := ParameterCodec.DecodeParameters(enc, corev1.SchemeGroupVersion, again); err != nil {
				t.Fatalf("re-decoding %v: %v", enc, err)
			}
			if want := encodable(into); !apiequality.Semantic.DeepEqual(again, want) {
				t.Fatalf("round trip of %q: %+v then %+v", query, into, again)
			}
		}
	})
}

// encodable is what of obj survives encoding as query parameters: the
// encoder writes sinceTime in whole seconds (the decoder, like
// kube-apiserver's, accepts fractions), and leaves out the zero elements
// of an omitempty list, so ports=0 (which validation refuses anyway)
// does not come back.
func encodable(obj runtime.Object) runtime.Object {
	switch o := obj.(type) {
	case *corev1.PodLogOptions:
		o = o.DeepCopy()
		if o.SinceTime != nil {
			t := metav1.NewTime(o.SinceTime.Truncate(time.Second))
			o.SinceTime = &t
		}
		return o
	case *corev1.PodPortForwardOptions:
		o = o.DeepCopy()
		o.Ports = slices.DeleteFunc(o.Ports, func(p int32) bool { return p == 0 })
		return o
	}
	return obj
}
