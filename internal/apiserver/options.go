package apiserver

import (
	"net/url"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/conversion"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The pods subresources' options (exec, attach, port-forward, log, and
// the pods' and Services' proxies) arrive
// as query parameters. They are registered under core/v1 and the internal
// version, like every served type, with conversions from url.Values that
// Kubernetes generates for its own scheme and k8s.io/api does not ship.
var podOptionTypes = []runtime.Object{
	&corev1.PodExecOptions{}, &corev1.PodAttachOptions{}, &corev1.PodPortForwardOptions{}, &corev1.PodLogOptions{},
	&corev1.PodProxyOptions{}, &corev1.ServiceProxyOptions{},
}

func init() {
	internal := schema.GroupVersion{Version: runtime.APIVersionInternal}
	for _, s := range []*runtime.Scheme{Scheme, OpenAPIScheme} {
		s.AddKnownTypes(corev1.SchemeGroupVersion, podOptionTypes...)
	}
	Scheme.AddKnownTypes(internal, podOptionTypes...)
	utilruntimeMust(addPodOptionConversions(Scheme))
}

// ParameterCodec decodes query parameters: the pods subresources' options
// through Scheme's conversions, everything else (list, get, delete
// options) as the generic API server does.
var ParameterCodec runtime.ParameterCodec = parameterCodec{pods: runtime.NewParameterCodec(Scheme), rest: metav1.ParameterCodec}

type parameterCodec struct{ pods, rest runtime.ParameterCodec }

func isPodOptions(obj runtime.Object) bool {
	switch obj.(type) {
	case *corev1.PodExecOptions, *corev1.PodAttachOptions, *corev1.PodPortForwardOptions, *corev1.PodLogOptions,
		*corev1.PodProxyOptions, *corev1.ServiceProxyOptions:
		return true
	}
	return false
}

func (c parameterCodec) DecodeParameters(parameters url.Values, from schema.GroupVersion, into runtime.Object) error {
	if isPodOptions(into) {
		return c.pods.DecodeParameters(parameters, from, into)
	}
	return c.rest.DecodeParameters(parameters, from, into)
}

func (c parameterCodec) EncodeParameters(obj runtime.Object, to schema.GroupVersion) (url.Values, error) {
	if isPodOptions(obj) {
		return c.pods.EncodeParameters(obj, to)
	}
	return c.rest.EncodeParameters(obj, to)
}

func addPodOptionConversions(s *runtime.Scheme) error {
	type boolField struct {
		name string
		into *bool
	}
	bools := func(in url.Values, sc conversion.Scope, fields ...boolField) error {
		for _, f := range fields {
			if v, ok := in[f.name]; ok {
				if err := runtime.Convert_Slice_string_To_bool(&v, f.into, sc); err != nil {
					return err
				}
			}
		}
		return nil
	}
	str := func(in url.Values, name string, into *string, sc conversion.Scope) error {
		if v, ok := in[name]; ok {
			return runtime.Convert_Slice_string_To_string(&v, into, sc)
		}
		return nil
	}
	if err := s.AddConversionFunc((*url.Values)(nil), (*corev1.PodExecOptions)(nil), func(a, b any, sc conversion.Scope) error {
		in, out := *a.(*url.Values), b.(*corev1.PodExecOptions)
		out.Command = append([]string(nil), in["command"]...)
		if err := str(in, "container", &out.Container, sc); err != nil {
			return err
		}
		return bools(in, sc, boolField{"stdin", &out.Stdin}, boolField{"stdout", &out.Stdout}, boolField{"stderr", &out.Stderr}, boolField{"tty", &out.TTY})
	}); err != nil {
		return err
	}
	if err := s.AddConversionFunc((*url.Values)(nil), (*corev1.PodAttachOptions)(nil), func(a, b any, sc conversion.Scope) error {
		in, out := *a.(*url.Values), b.(*corev1.PodAttachOptions)
		if err := str(in, "container", &out.Container, sc); err != nil {
			return err
		}
		return bools(in, sc, boolField{"stdin", &out.Stdin}, boolField{"stdout", &out.Stdout}, boolField{"stderr", &out.Stderr}, boolField{"tty", &out.TTY})
	}); err != nil {
		return err
	}
	// The proxies' path is the URL's rest, which the API server passes as
	// the "path" parameter.
	if err := s.AddConversionFunc((*url.Values)(nil), (*corev1.PodProxyOptions)(nil), func(a, b any, sc conversion.Scope) error {
		return str(*a.(*url.Values), "path", &b.(*corev1.PodProxyOptions).Path, sc)
	}); err != nil {
		return err
	}
	if err := s.AddConversionFunc((*url.Values)(nil), (*corev1.ServiceProxyOptions)(nil), func(a, b any, sc conversion.Scope) error {
		return str(*a.(*url.Values), "path", &b.(*corev1.ServiceProxyOptions).Path, sc)
	}); err != nil {
		return err
	}
	if err := s.AddConversionFunc((*url.Values)(nil), (*corev1.PodPortForwardOptions)(nil), func(a, b any, sc conversion.Scope) error {
		in, out := *a.(*url.Values), b.(*corev1.PodPortForwardOptions)
		if v, ok := in["ports"]; ok {
			return metav1.Convert_Slice_string_To_Slice_int32(&v, &out.Ports, sc)
		}
		return nil
	}); err != nil {
		return err
	}
	return s.AddConversionFunc((*url.Values)(nil), (*corev1.PodLogOptions)(nil), func(a, b any, sc conversion.Scope) error {
		in, out := *a.(*url.Values), b.(*corev1.PodLogOptions)
		if err := str(in, "container", &out.Container, sc); err != nil {
			return err
		}
		if err := bools(in, sc, boolField{"follow", &out.Follow}, boolField{"previous", &out.Previous}, boolField{"timestamps", &out.Timestamps},
			boolField{"insecureSkipTLSVerifyBackend", &out.InsecureSkipTLSVerifyBackend}); err != nil {
			return err
		}
		for _, f := range []struct {
			name string
			into **int64
		}{{"sinceSeconds", &out.SinceSeconds}, {"tailLines", &out.TailLines}, {"limitBytes", &out.LimitBytes}} {
			if v, ok := in[f.name]; ok {
				if err := runtime.Convert_Slice_string_To_Pointer_int64(&v, f.into, sc); err != nil {
					return err
				}
			}
		}
		if v, ok := in["sinceTime"]; ok {
			if err := metav1.Convert_Slice_string_To_Pointer_v1_Time(&v, &out.SinceTime, sc); err != nil {
				return err
			}
		}
		if v, ok := in["stream"]; ok && len(v) > 0 {
			out.Stream = &v[0]
		}
		return nil
	})
}
