package apiserver

import (
	"bytes"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	registrygeneric "k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/storage/storagebackend"
)

type fixedOptions struct{ codec runtime.Codec }

func (f fixedOptions) GetRESTOptions(schema.GroupResource, runtime.Object) (registrygeneric.RESTOptions, error) {
	return registrygeneric.RESTOptions{StorageConfig: &storagebackend.ConfigForResource{Config: storagebackend.Config{Codec: f.codec}}}, nil
}

// Everything but Services is stored as protobuf, and objects stored as
// JSON by earlier versions still read back.
func TestStorageEncodings(t *testing.T) {
	versions := []schema.GroupVersion{corev1.SchemeGroupVersion}
	jsonCodec := Codecs.LegacyCodec(versions...)
	proto, err := protobufStorageCodec(versions)
	if err != nil {
		t.Fatal(err)
	}
	getter := storageEncodings{RESTOptionsGetter: fixedOptions{jsonCodec}, protobuf: proto}
	for _, tc := range []struct {
		resource schema.GroupResource
		want     runtime.Codec
	}{
		{schema.GroupResource{Resource: "pods"}, proto},
		{schema.GroupResource{Resource: "nodes"}, proto},
		{schema.GroupResource{Group: "discovery.k8s.io", Resource: "endpointslices"}, proto},
		{schema.GroupResource{Resource: "services"}, jsonCodec},
	} {
		opts, err := getter.GetRESTOptions(tc.resource, nil)
		if err != nil {
			t.Fatal(err)
		}
		if opts.StorageConfig.Codec != tc.want {
			t.Errorf("%s: stored with the wrong codec", tc.resource)
		}
	}

	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", Labels: map[string]string{"app": "web"}},
		Status:     corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}, {IP: "fd00:10:244:1::5"}}},
	}
	var asProto, asJSON bytes.Buffer
	if err := proto.Encode(pod, &asProto); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(asProto.Bytes(), []byte("k8s\x00")) {
		t.Errorf("protobuf storage wrote %q, want the protobuf envelope", asProto.Bytes()[:min(8, asProto.Len())])
	}
	if err := jsonCodec.Encode(pod, &asJSON); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"protobuf": asProto.Bytes(), "JSON": asJSON.Bytes()} {
		obj, _, err := proto.Decode(data, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, ok := obj.(*corev1.Pod)
		if !ok || got.Name != "web" || got.Labels["app"] != "web" || len(got.Status.PodIPs) != 2 {
			t.Errorf("%s read back as %#v", name, obj)
		}
	}
}
