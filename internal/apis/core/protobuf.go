package core

import (
	corev1 "k8s.io/api/core/v1"
)

// Protobuf clients (kubectl create service, client-go with protobuf) speak
// k8s.io/api's schema, which has no ipFamily: the wire form is the v1
// Service, and ipFamily, always equal to ipFamilies[0] on what is served,
// is simply not carried.

// Marshal encodes the Service as a core/v1 Service protobuf message.
func (in *Service) Marshal() ([]byte, error) { return in.ToV1().Marshal() }

// Unmarshal decodes a core/v1 Service protobuf message.
func (in *Service) Unmarshal(data []byte) error {
	var v1 corev1.Service
	if err := v1.Unmarshal(data); err != nil {
		return err
	}
	*in = *FromV1(&v1)
	return nil
}

// Reset clears the Service before decoding.
func (in *Service) Reset() { *in = Service{} }

// Marshal encodes the list as a core/v1 ServiceList protobuf message.
func (in *ServiceList) Marshal() ([]byte, error) {
	out := corev1.ServiceList{TypeMeta: in.TypeMeta, ListMeta: in.ListMeta}
	for i := range in.Items {
		out.Items = append(out.Items, *in.Items[i].ToV1())
	}
	return out.Marshal()
}

// Unmarshal decodes a core/v1 ServiceList protobuf message.
func (in *ServiceList) Unmarshal(data []byte) error {
	var v1 corev1.ServiceList
	if err := v1.Unmarshal(data); err != nil {
		return err
	}
	*in = ServiceList{TypeMeta: v1.TypeMeta, ListMeta: v1.ListMeta}
	for i := range v1.Items {
		in.Items = append(in.Items, *FromV1(&v1.Items[i]))
	}
	return nil
}

// Reset clears the list before decoding.
func (in *ServiceList) Reset() { *in = ServiceList{} }
