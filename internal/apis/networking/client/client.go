// Package client is a typed client of networking.duet.dev/v1alpha1
// ClusterCIDRs, and an informer over them, for the server's controllers
// and for tests: what client-gen would generate, for the one resource.
package client

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/duet-net/duet/internal/apis/networking/v1alpha1"
)

const resource = "clustercidrs"

var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
)

func init() {
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		panic(err) // a programming error: the scheme is static
	}
}

// ClusterCIDRs reads and writes ClusterCIDRs.
type ClusterCIDRs struct{ rest rest.Interface }

// New returns a client speaking JSON over config's connection.
func New(config *rest.Config) (*ClusterCIDRs, error) {
	c := rest.CopyConfig(config)
	c.GroupVersion = &v1alpha1.SchemeGroupVersion
	c.APIPath = "/apis"
	c.ContentType = runtime.ContentTypeJSON
	c.AcceptContentTypes = runtime.ContentTypeJSON
	c.NegotiatedSerializer = codecs.WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("building a ClusterCIDR client: %w", err)
	}
	return &ClusterCIDRs{rest: rc}, nil
}

// Get reads one ClusterCIDR.
func (c *ClusterCIDRs) Get(ctx context.Context, name string, opts metav1.GetOptions) (*v1alpha1.ClusterCIDR, error) {
	out := &v1alpha1.ClusterCIDR{}
	err := c.rest.Get().Resource(resource).Name(name).VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(out)
	return out, err
}

// List lists ClusterCIDRs.
func (c *ClusterCIDRs) List(ctx context.Context, opts metav1.ListOptions) (*v1alpha1.ClusterCIDRList, error) {
	out := &v1alpha1.ClusterCIDRList{}
	err := c.rest.Get().Resource(resource).VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(out)
	return out, err
}

// Watch watches ClusterCIDRs.
func (c *ClusterCIDRs) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return c.rest.Get().Resource(resource).VersionedParams(&opts, metav1.ParameterCodec).Watch(ctx)
}

// Create creates a ClusterCIDR.
func (c *ClusterCIDRs) Create(ctx context.Context, obj *v1alpha1.ClusterCIDR, opts metav1.CreateOptions) (*v1alpha1.ClusterCIDR, error) {
	out := &v1alpha1.ClusterCIDR{}
	err := c.rest.Post().Resource(resource).VersionedParams(&opts, metav1.ParameterCodec).Body(obj).Do(ctx).Into(out)
	return out, err
}

// Update replaces a ClusterCIDR (its status aside).
func (c *ClusterCIDRs) Update(ctx context.Context, obj *v1alpha1.ClusterCIDR, opts metav1.UpdateOptions) (*v1alpha1.ClusterCIDR, error) {
	out := &v1alpha1.ClusterCIDR{}
	err := c.rest.Put().Resource(resource).Name(obj.Name).VersionedParams(&opts, metav1.ParameterCodec).Body(obj).Do(ctx).Into(out)
	return out, err
}

// UpdateStatus replaces a ClusterCIDR's status.
func (c *ClusterCIDRs) UpdateStatus(ctx context.Context, obj *v1alpha1.ClusterCIDR, opts metav1.UpdateOptions) (*v1alpha1.ClusterCIDR, error) {
	out := &v1alpha1.ClusterCIDR{}
	err := c.rest.Put().Resource(resource).Name(obj.Name).SubResource("status").VersionedParams(&opts, metav1.ParameterCodec).Body(obj).Do(ctx).Into(out)
	return out, err
}

// Delete deletes a ClusterCIDR.
func (c *ClusterCIDRs) Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error {
	return c.rest.Delete().Resource(resource).Name(name).Body(&opts).Do(ctx).Error()
}

// NewInformer returns an informer over every ClusterCIDR.
func (c *ClusterCIDRs) NewInformer(resync time.Duration) cache.SharedIndexInformer {
	return cache.NewSharedIndexInformer(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, opts) },
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			return c.Watch(ctx, opts)
		},
	}, &v1alpha1.ClusterCIDR{}, resync, cache.Indexers{})
}
