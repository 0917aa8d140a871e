package podconfig

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	registry "github.com/duet-net/duet/internal/registry/generic"
)

// MaxSize is the most a ConfigMap's or a Secret's values may hold together,
// Kubernetes' limit: an etcd value must stay well under etcd's request limit.
const MaxSize = corev1.MaxSecretSize

// EnforceMountableSecretsAnnotation, "true" on a ServiceAccount, limited
// its pods to the Secrets it lists; Kubernetes deprecated it in 1.32.
const EnforceMountableSecretsAnnotation = "kubernetes.io/enforce-mountable-secrets"

// immutableDetail is why a field of an immutable object may not change.
const immutableDetail = "field is immutable when `immutable` is set"

func configMapStrategy() *registry.Strategy {
	return &registry.Strategy{
		Namespaced:    true,
		NameValidator: nameIsDNSSubdomain,
		ValidateFunc: func(_ context.Context, obj runtime.Object) field.ErrorList {
			return ValidateConfigMap(obj.(*corev1.ConfigMap))
		},
		ValidateUpdateFunc: func(_ context.Context, obj, old runtime.Object) field.ErrorList {
			return ValidateConfigMapUpdate(obj.(*corev1.ConfigMap), old.(*corev1.ConfigMap))
		},
	}
}

// ValidateConfigMap checks keys (a key may be in data or binaryData, not
// both) and the total size; metadata is the Strategy's.
func ValidateConfigMap(cm *corev1.ConfigMap) field.ErrorList {
	var errs field.ErrorList
	size, binSize := 0, 0
	dataPath, binPath := field.NewPath("data"), field.NewPath("binaryData")
	for _, k := range sortedKeys(cm.Data) {
		errs = append(errs, validateKey(dataPath, k)...)
		if _, dup := cm.BinaryData[k]; dup {
			errs = append(errs, field.Invalid(dataPath.Key(k), k, "duplicate of key present in binaryData"))
		}
		size += len(cm.Data[k])
	}
	for _, k := range sortedKeys(cm.BinaryData) {
		errs = append(errs, validateKey(binPath, k)...)
		binSize += len(cm.BinaryData[k])
	}
	if size+binSize > MaxSize {
		p := dataPath
		if binSize > size {
			p = binPath
		}
		errs = append(errs, tooLarge(p, "data and binaryData together", size+binSize))
	}
	return errs
}

// ValidateConfigMapUpdate adds to ValidateConfigMap what `immutable`
// freezes: once true, it and the data stay.
func ValidateConfigMapUpdate(cm, old *corev1.ConfigMap) field.ErrorList {
	var errs field.ErrorList
	if isTrue(old.Immutable) {
		if !isTrue(cm.Immutable) {
			errs = append(errs, field.Forbidden(field.NewPath("immutable"), immutableDetail))
		}
		if !reflect.DeepEqual(cm.Data, old.Data) {
			errs = append(errs, field.Forbidden(field.NewPath("data"), immutableDetail))
		}
		if !reflect.DeepEqual(cm.BinaryData, old.BinaryData) {
			errs = append(errs, field.Forbidden(field.NewPath("binaryData"), immutableDetail))
		}
	}
	return append(errs, ValidateConfigMap(cm)...)
}

func secretStrategy() *registry.Strategy {
	return &registry.Strategy{
		Namespaced:    true,
		NameValidator: nameIsDNSSubdomain,
		PrepareForCreateFunc: func(_ context.Context, obj runtime.Object) {
			PrepareSecret(obj.(*corev1.Secret))
		},
		PrepareForUpdateFunc: func(_ context.Context, obj, _ runtime.Object) {
			PrepareSecret(obj.(*corev1.Secret))
		},
		ValidateFunc: func(_ context.Context, obj runtime.Object) field.ErrorList {
			return ValidateSecret(obj.(*corev1.Secret))
		},
		ValidateUpdateFunc: func(_ context.Context, obj, old runtime.Object) field.ErrorList {
			return ValidateSecretUpdate(obj.(*corev1.Secret), old.(*corev1.Secret))
		},
		WarningsFunc: func(obj runtime.Object) []string { return secretWarnings(obj.(*corev1.Secret)) },
	}
}

// PrepareSecret does what Kubernetes' decoding does to a v1 Secret before
// its strategy sees it: stringData is written over data (it is write-only
// and never stored), and an empty type is Opaque.
func PrepareSecret(s *corev1.Secret) {
	if len(s.StringData) > 0 {
		if s.Data == nil {
			s.Data = make(map[string][]byte, len(s.StringData))
		}
		for k, v := range s.StringData {
			s.Data[k] = []byte(v)
		}
	}
	s.StringData = nil
	if s.Type == "" {
		s.Type = corev1.SecretTypeOpaque
	}
}

// ValidateSecret checks keys, the total size, and the keys each built-in
// type requires; other types are free-form.
func ValidateSecret(s *corev1.Secret) field.ErrorList {
	var errs field.ErrorList
	dataPath := field.NewPath("data")
	size := 0
	for _, k := range sortedKeys(s.Data) {
		errs = append(errs, validateKey(dataPath, k)...)
		size += len(s.Data[k])
	}
	if size > MaxSize {
		errs = append(errs, tooLarge(dataPath, "data", size))
	}
	required := func(key string) {
		errs = append(errs, field.Required(dataPath.Key(key), fmt.Sprintf("a Secret of type %s must have the key %q", s.Type, key)))
	}
	isJSON := func(key string) {
		b, ok := s.Data[key]
		if !ok {
			required(key)
			return
		}
		if err := json.Unmarshal(b, &map[string]any{}); err != nil {
			errs = append(errs, field.Invalid(dataPath.Key(key), "<secret contents redacted>", "must be a JSON object: "+err.Error()))
		}
	}
	switch s.Type {
	case corev1.SecretTypeOpaque, "":
	case corev1.SecretTypeServiceAccountToken:
		// The token itself may come later (Kubernetes' token controller
		// fills it in); the account it is for may not.
		if s.Annotations[corev1.ServiceAccountNameKey] == "" {
			errs = append(errs, field.Required(field.NewPath("metadata", "annotations").Key(corev1.ServiceAccountNameKey),
				"a Secret of type "+string(s.Type)+" must name its ServiceAccount"))
		}
	case corev1.SecretTypeDockercfg:
		isJSON(corev1.DockerConfigKey)
	case corev1.SecretTypeDockerConfigJson:
		isJSON(corev1.DockerConfigJsonKey)
	case corev1.SecretTypeBasicAuth:
		// Either may be empty, but one must be there.
		_, user := s.Data[corev1.BasicAuthUsernameKey]
		_, pass := s.Data[corev1.BasicAuthPasswordKey]
		if !user && !pass {
			required(corev1.BasicAuthUsernameKey)
			required(corev1.BasicAuthPasswordKey)
		}
	case corev1.SecretTypeSSHAuth:
		if len(s.Data[corev1.SSHAuthPrivateKey]) == 0 {
			required(corev1.SSHAuthPrivateKey)
		}
	case corev1.SecretTypeTLS:
		for _, k := range []string{corev1.TLSCertKey, corev1.TLSPrivateKeyKey} {
			if _, ok := s.Data[k]; !ok {
				required(k)
			}
		}
	}
	return errs
}

// ValidateSecretUpdate adds what may not change: the type, ever, and once
// immutable is true, it and the data.
func ValidateSecretUpdate(s, old *corev1.Secret) field.ErrorList {
	var errs field.ErrorList
	if s.Type != old.Type {
		errs = append(errs, field.Invalid(field.NewPath("type"), s.Type, "field is immutable"))
	}
	if isTrue(old.Immutable) {
		if !isTrue(s.Immutable) {
			errs = append(errs, field.Forbidden(field.NewPath("immutable"), immutableDetail))
		}
		if !reflect.DeepEqual(s.Data, old.Data) {
			errs = append(errs, field.Forbidden(field.NewPath("data"), immutableDetail))
		}
	}
	return append(errs, ValidateSecret(s)...)
}

// secretWarnings warns of a TLS Secret whose key does not match its
// certificate, which Kubernetes accepts but no server can use.
func secretWarnings(s *corev1.Secret) []string {
	if s.Type != corev1.SecretTypeTLS {
		return nil
	}
	if _, err := tls.X509KeyPair(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey]); err != nil {
		return []string{"data[tls.crt], data[tls.key]: " + err.Error()}
	}
	return nil
}

func serviceAccountStrategy() *registry.Strategy {
	clean := func(_ context.Context, obj runtime.Object) { CleanSecretReferences(obj.(*corev1.ServiceAccount)) }
	return &registry.Strategy{
		Namespaced:           true,
		NameValidator:        apivalidation.ValidateServiceAccountName,
		PrepareForCreateFunc: clean,
		PrepareForUpdateFunc: func(ctx context.Context, obj, _ runtime.Object) { clean(ctx, obj) },
		ValidateFunc: func(_ context.Context, obj runtime.Object) field.ErrorList {
			return ValidateServiceAccount(obj.(*corev1.ServiceAccount))
		},
		WarningsFunc: func(obj runtime.Object) []string {
			if _, ok := obj.(*corev1.ServiceAccount).Annotations[EnforceMountableSecretsAnnotation]; ok {
				return []string{fmt.Sprintf("metadata.annotations[%s]: deprecated since Kubernetes 1.32 and ignored by Duet; isolate Secrets in namespaces of their own instead", EnforceMountableSecretsAnnotation)}
			}
			return nil
		},
	}
}

// CleanSecretReferences keeps only the name of each Secret a
// ServiceAccount lists: they are always in its namespace, and anything
// more would only go stale.
func CleanSecretReferences(sa *corev1.ServiceAccount) {
	for i, ref := range sa.Secrets {
		sa.Secrets[i] = corev1.ObjectReference{Name: ref.Name}
	}
}

// ValidateServiceAccount checks the Secrets a ServiceAccount references
// are named. Kubernetes stores any name there; an empty one can only be a
// mistake.
func ValidateServiceAccount(sa *corev1.ServiceAccount) field.ErrorList {
	var errs field.ErrorList
	for i, ref := range sa.Secrets {
		errs = append(errs, validateRefName(field.NewPath("secrets").Index(i).Child("name"), ref.Name)...)
	}
	for i, ref := range sa.ImagePullSecrets {
		errs = append(errs, validateRefName(field.NewPath("imagePullSecrets").Index(i).Child("name"), ref.Name)...)
	}
	return errs
}

func validateRefName(p *field.Path, name string) field.ErrorList {
	if name == "" {
		return field.ErrorList{field.Required(p, "the name of a Secret in the ServiceAccount's namespace")}
	}
	var errs field.ErrorList
	for _, msg := range nameIsDNSSubdomain(name, false) {
		errs = append(errs, field.Invalid(p, name, msg))
	}
	return errs
}

// validateKey checks one data key: letters, digits, '-', '_' and '.', as
// the file names ConfigMap and Secret volumes turn keys into.
func validateKey(p *field.Path, key string) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsConfigMapKey(key) {
		errs = append(errs, field.Invalid(p.Key(key), key, msg))
	}
	return errs
}

func tooLarge(p *field.Path, what string, size int) *field.Error {
	e := field.TooLong(p, "", MaxSize)
	e.Detail = fmt.Sprintf("the values of %s must total at most %d bytes (1 MiB), not %d", what, MaxSize, size)
	return e
}

func isTrue(b *bool) bool { return b != nil && *b }

// sortedKeys makes errors come in a stable order.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
