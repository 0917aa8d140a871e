package podconfig

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"

	registry "github.com/duet-net/duet/internal/registry/generic"
)

// wantErrors checks errs against want, each "field: type" with an
// optional detail fragment after a second colon ("data[a b]: Invalid:
// must consist"); nil want means valid.
func wantErrors(t *testing.T, errs field.ErrorList, want []string) {
	t.Helper()
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d:\n got: %v\nwant: %q", len(errs), len(want), errs.ToAggregate(), want)
	}
	for i, w := range want {
		f, rest, _ := strings.Cut(w, ": ")
		typ, detail, _ := strings.Cut(rest, ": ")
		e := errs[i]
		if e.Field != f || !strings.HasPrefix(e.Type.String(), typ) || !strings.Contains(e.Error(), detail) {
			t.Errorf("error %d = %q, want field %q, type %q, detail containing %q", i, e.Error(), f, typ, detail)
		}
	}
}

func validate(s *registry.Strategy, obj runtime.Object) field.ErrorList {
	s.PrepareForCreate(context.Background(), obj)
	return s.Validate(context.Background(), obj)
}

func validateUpdate(s *registry.Strategy, obj, old runtime.Object) field.ErrorList {
	s.PrepareForUpdate(context.Background(), obj, old)
	return s.ValidateUpdate(context.Background(), obj, old)
}

func objMeta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: "ns1", ResourceVersion: "1"}
}

func TestValidateConfigMap(t *testing.T) {
	big := strings.Repeat("x", MaxSize/2+1)
	for _, tc := range []struct {
		name string
		cm   corev1.ConfigMap
		want []string
	}{
		{name: "empty is valid", cm: corev1.ConfigMap{ObjectMeta: objMeta("c")}},
		{name: "keys of every allowed character", cm: corev1.ConfigMap{ObjectMeta: objMeta("c"),
			Data: map[string]string{"a.b_c-D9": "v", ".hidden": "v"}, BinaryData: map[string][]byte{"bin": {0, 1}}}},
		{name: "name must be a DNS subdomain", cm: corev1.ConfigMap{ObjectMeta: objMeta("Bad_Name")},
			want: []string{"metadata.name: Invalid: a lowercase RFC 1123 subdomain"}},
		{name: "namespace required", cm: corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "c"}},
			want: []string{"metadata.namespace: Required value"}},
		{name: "key with a space", cm: corev1.ConfigMap{ObjectMeta: objMeta("c"), Data: map[string]string{"a b": "v"}},
			want: []string{"data[a b]: Invalid: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"}},
		{name: "key with a slash in binaryData", cm: corev1.ConfigMap{ObjectMeta: objMeta("c"), BinaryData: map[string][]byte{"a/b": nil}},
			want: []string{"binaryData[a/b]: Invalid: alphanumeric"}},
		{name: "key '..' ", cm: corev1.ConfigMap{ObjectMeta: objMeta("c"), Data: map[string]string{"..": "v"}},
			want: []string{"data[..]: Invalid: must not be '..'"}},
		{name: "key in both data and binaryData", cm: corev1.ConfigMap{ObjectMeta: objMeta("c"),
			Data: map[string]string{"k": "v"}, BinaryData: map[string][]byte{"k": []byte("v")}},
			want: []string{"data[k]: Invalid: duplicate of key present in binaryData"}},
		{name: "exactly 1 MiB is valid", cm: corev1.ConfigMap{ObjectMeta: objMeta("c"), Data: map[string]string{"a": strings.Repeat("x", MaxSize)}}},
		{name: "over 1 MiB in data", cm: corev1.ConfigMap{ObjectMeta: objMeta("c"), Data: map[string]string{"a": strings.Repeat("x", MaxSize+1)}},
			want: []string{"data: Too long: must total at most 1048576 bytes (1 MiB), not 1048577"}},
		{name: "over 1 MiB across data and binaryData", cm: corev1.ConfigMap{ObjectMeta: objMeta("c"),
			Data: map[string]string{"a": big}, BinaryData: map[string][]byte{"b": []byte(big + "y")}},
			want: []string{"binaryData: Too long: data and binaryData together"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErrors(t, validate(configMapStrategy(), &tc.cm), tc.want)
		})
	}
}

func TestValidateConfigMapUpdate(t *testing.T) {
	mutable := corev1.ConfigMap{ObjectMeta: objMeta("c"), Data: map[string]string{"k": "v"}}
	frozen := *mutable.DeepCopy()
	frozen.Immutable = ptr.To(true)
	for _, tc := range []struct {
		name     string
		old      corev1.ConfigMap
		edit     func(*corev1.ConfigMap)
		want     []string
		noChange bool
	}{
		{name: "mutable data changes", old: mutable, edit: func(c *corev1.ConfigMap) { c.Data["k"] = "w" }},
		{name: "mutable becomes immutable", old: mutable, edit: func(c *corev1.ConfigMap) { c.Immutable = ptr.To(true) }},
		{name: "immutable: labels may change", old: frozen, edit: func(c *corev1.ConfigMap) { c.Labels = map[string]string{"a": "b"} }},
		{name: "immutable: data may not change", old: frozen, edit: func(c *corev1.ConfigMap) { c.Data["k"] = "w" },
			want: []string{"data: Forbidden: field is immutable when `immutable` is set"}},
		{name: "immutable: binaryData may not be added", old: frozen, edit: func(c *corev1.ConfigMap) { c.BinaryData = map[string][]byte{"b": nil} },
			want: []string{"binaryData: Forbidden: field is immutable"}},
		{name: "immutable: may not become mutable", old: frozen, edit: func(c *corev1.ConfigMap) { c.Immutable = ptr.To(false) },
			want: []string{"immutable: Forbidden: field is immutable when `immutable` is set"}},
		{name: "immutable: may not drop the field", old: frozen, edit: func(c *corev1.ConfigMap) { c.Immutable = nil },
			want: []string{"immutable: Forbidden"}},
		{name: "keys are checked on update too", old: mutable, edit: func(c *corev1.ConfigMap) { c.Data["a b"] = "" },
			want: []string{"data[a b]: Invalid"}},
		{name: "name may not change", old: mutable, edit: func(c *corev1.ConfigMap) { c.Name = "d" },
			want: []string{"metadata.name: Invalid: field is immutable"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cm := tc.old.DeepCopy()
			tc.edit(cm)
			wantErrors(t, validateUpdate(configMapStrategy(), cm, tc.old.DeepCopy()), tc.want)
		})
	}
}

// tlsPair returns a PEM certificate and key, and a key of another pair.
func tlsPair(t *testing.T) (cert, key, otherKey []byte) {
	t.Helper()
	gen := func() (*ecdsa.PrivateKey, []byte) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return k, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	k, key := gen()
	_, otherKey = gen()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key, otherKey
}

func TestValidateSecret(t *testing.T) {
	cert, key, otherKey := tlsPair(t)
	secret := func(typ corev1.SecretType, data map[string]string) corev1.Secret {
		s := corev1.Secret{ObjectMeta: objMeta("s"), Type: typ}
		for k, v := range data {
			if s.Data == nil {
				s.Data = map[string][]byte{}
			}
			s.Data[k] = []byte(v)
		}
		return s
	}
	saToken := secret(corev1.SecretTypeServiceAccountToken, nil)
	saToken.Annotations = map[string]string{corev1.ServiceAccountNameKey: "default"}
	for _, tc := range []struct {
		name         string
		secret       corev1.Secret
		want         []string
		wantWarnings int
	}{
		{name: "opaque with any valid keys", secret: secret("", map[string]string{"a": "1", "b.c": "2"})},
		{name: "a type of the user's own", secret: secret("example.com/thing", map[string]string{"x": "1"})},
		{name: "bad key", secret: secret(corev1.SecretTypeOpaque, map[string]string{"a:b": "1"}),
			want: []string{"data[a:b]: Invalid: a valid config key must consist of alphanumeric characters"}},
		{name: "over 1 MiB", secret: secret(corev1.SecretTypeOpaque, map[string]string{"a": strings.Repeat("x", MaxSize), "b": "y"}),
			want: []string{"data: Too long: the values of data must total at most 1048576 bytes"}},
		{name: "bad name", secret: corev1.Secret{ObjectMeta: objMeta("-s")}, want: []string{"metadata.name: Invalid"}},
		{name: "service-account-token names its account", secret: saToken},
		{name: "service-account-token without its account", secret: secret(corev1.SecretTypeServiceAccountToken, nil),
			want: []string{"metadata.annotations[kubernetes.io/service-account.name]: Required value: a Secret of type kubernetes.io/service-account-token must name its ServiceAccount"}},
		{name: "dockerconfigjson", secret: secret(corev1.SecretTypeDockerConfigJson, map[string]string{".dockerconfigjson": `{"auths":{}}`})},
		{name: "dockerconfigjson missing", secret: secret(corev1.SecretTypeDockerConfigJson, map[string]string{"x": "1"}),
			want: []string{"data[.dockerconfigjson]: Required value: a Secret of type kubernetes.io/dockerconfigjson must have the key \".dockerconfigjson\""}},
		{name: "dockerconfigjson not JSON", secret: secret(corev1.SecretTypeDockerConfigJson, map[string]string{".dockerconfigjson": "{nope"}),
			want: []string{"data[.dockerconfigjson]: Invalid: must be a JSON object"}},
		{name: "dockercfg not a JSON object", secret: secret(corev1.SecretTypeDockercfg, map[string]string{".dockercfg": "[1]"}),
			want: []string{"data[.dockercfg]: Invalid: must be a JSON object"}},
		{name: "basic-auth with a username only", secret: secret(corev1.SecretTypeBasicAuth, map[string]string{"username": "u"})},
		{name: "basic-auth with an empty password only", secret: secret(corev1.SecretTypeBasicAuth, map[string]string{"password": ""})},
		{name: "basic-auth with neither", secret: secret(corev1.SecretTypeBasicAuth, nil),
			want: []string{"data[username]: Required value", "data[password]: Required value"}},
		{name: "ssh-auth", secret: secret(corev1.SecretTypeSSHAuth, map[string]string{"ssh-privatekey": "k"})},
		{name: "ssh-auth with an empty key", secret: secret(corev1.SecretTypeSSHAuth, map[string]string{"ssh-privatekey": ""}),
			want: []string{"data[ssh-privatekey]: Required value"}},
		{name: "tls", secret: secret(corev1.SecretTypeTLS, map[string]string{"tls.crt": string(cert), "tls.key": string(key)})},
		{name: "tls without its key", secret: secret(corev1.SecretTypeTLS, map[string]string{"tls.crt": string(cert)}),
			want: []string{"data[tls.key]: Required value"}, wantWarnings: 1},
		{name: "tls with neither", secret: secret(corev1.SecretTypeTLS, nil),
			want: []string{"data[tls.crt]: Required value", "data[tls.key]: Required value"}, wantWarnings: 1},
		{name: "tls whose key does not match: a warning", secret: secret(corev1.SecretTypeTLS, map[string]string{"tls.crt": string(cert), "tls.key": string(otherKey)}),
			wantWarnings: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := secretStrategy()
			wantErrors(t, validate(s, &tc.secret), tc.want)
			if w := s.WarningsOnCreate(context.Background(), &tc.secret); len(w) != tc.wantWarnings {
				t.Errorf("warnings %q, want %d", w, tc.wantWarnings)
			}
		})
	}
}

func TestPrepareSecret(t *testing.T) {
	s := &corev1.Secret{ObjectMeta: objMeta("s"), Data: map[string][]byte{"a": []byte("1"), "b": []byte("2")},
		StringData: map[string]string{"b": "two", "c": "three"}}
	secretStrategy().PrepareForCreate(context.Background(), s)
	if s.Type != corev1.SecretTypeOpaque {
		t.Errorf("type %q, want Opaque", s.Type)
	}
	if s.StringData != nil {
		t.Errorf("stringData %v kept; it is write-only", s.StringData)
	}
	if got := map[string]string{"a": string(s.Data["a"]), "b": string(s.Data["b"]), "c": string(s.Data["c"])}; len(s.Data) != 3 || got["a"] != "1" || got["b"] != "two" || got["c"] != "three" {
		t.Errorf("data %v, want a=1 b=two (stringData wins) c=three", got)
	}
	only := &corev1.Secret{ObjectMeta: objMeta("s"), StringData: map[string]string{"bad key": "v"}}
	wantErrors(t, validate(secretStrategy(), only), []string{"data[bad key]: Invalid"})
}

func TestValidateSecretUpdate(t *testing.T) {
	base := corev1.Secret{ObjectMeta: objMeta("s"), Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"k": []byte("v")}}
	frozen := *base.DeepCopy()
	frozen.Immutable = ptr.To(true)
	for _, tc := range []struct {
		name string
		old  corev1.Secret
		edit func(*corev1.Secret)
		want []string
	}{
		{name: "data changes", old: base, edit: func(s *corev1.Secret) { s.Data["k"] = []byte("w") }},
		{name: "stringData changes data", old: base, edit: func(s *corev1.Secret) { s.StringData = map[string]string{"k": "w"} }},
		{name: "type may not change", old: base, edit: func(s *corev1.Secret) { s.Type = "example.com/x" },
			want: []string{"type: Invalid: field is immutable"}},
		{name: "an omitted type is Opaque, unchanged", old: base, edit: func(s *corev1.Secret) { s.Type = "" }},
		{name: "immutable: data may not change", old: frozen, edit: func(s *corev1.Secret) { s.Data["k"] = []byte("w") },
			want: []string{"data: Forbidden: field is immutable when `immutable` is set"}},
		{name: "immutable: nor through stringData", old: frozen, edit: func(s *corev1.Secret) { s.StringData = map[string]string{"n": "1"} },
			want: []string{"data: Forbidden: field is immutable when `immutable` is set"}},
		{name: "immutable: may not become mutable", old: frozen, edit: func(s *corev1.Secret) { s.Immutable = nil },
			want: []string{"immutable: Forbidden"}},
		{name: "immutable: annotations may change", old: frozen, edit: func(s *corev1.Secret) { s.Annotations = map[string]string{"a": "b"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.old.DeepCopy()
			tc.edit(s)
			wantErrors(t, validateUpdate(secretStrategy(), s, tc.old.DeepCopy()), tc.want)
		})
	}
}

func TestValidateServiceAccount(t *testing.T) {
	for _, tc := range []struct {
		name string
		sa   corev1.ServiceAccount
		want []string
	}{
		{name: "default", sa: corev1.ServiceAccount{ObjectMeta: objMeta("default")}},
		{name: "with references", sa: corev1.ServiceAccount{ObjectMeta: objMeta("builder"),
			Secrets: []corev1.ObjectReference{{Name: "token"}}, ImagePullSecrets: []corev1.LocalObjectReference{{Name: "registry"}}}},
		{name: "bad name", sa: corev1.ServiceAccount{ObjectMeta: objMeta("Builder")}, want: []string{"metadata.name: Invalid"}},
		{name: "unnamed secret", sa: corev1.ServiceAccount{ObjectMeta: objMeta("b"), Secrets: []corev1.ObjectReference{{Namespace: "x"}}},
			want: []string{"secrets[0].name: Required value"}},
		{name: "bad image pull secret", sa: corev1.ServiceAccount{ObjectMeta: objMeta("b"), ImagePullSecrets: []corev1.LocalObjectReference{{Name: "ok"}, {Name: "Not_OK"}}},
			want: []string{"imagePullSecrets[1].name: Invalid"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErrors(t, validate(serviceAccountStrategy(), &tc.sa), tc.want)
		})
	}
}

func TestServiceAccountReferencesKeepOnlyNames(t *testing.T) {
	sa := &corev1.ServiceAccount{ObjectMeta: objMeta("b"), Secrets: []corev1.ObjectReference{{Name: "t", Namespace: "other", UID: "u", Kind: "Secret"}}}
	serviceAccountStrategy().PrepareForCreate(context.Background(), sa)
	if want := (corev1.ObjectReference{Name: "t"}); sa.Secrets[0] != want {
		t.Errorf("secrets[0] = %+v, want %+v", sa.Secrets[0], want)
	}
	sa.Annotations = map[string]string{EnforceMountableSecretsAnnotation: "true"}
	if w := serviceAccountStrategy().WarningsOnCreate(context.Background(), sa); len(w) != 1 {
		t.Errorf("warnings %q, want one about the deprecated annotation", w)
	}
}

func TestTables(t *testing.T) {
	cm := &corev1.ConfigMap{ObjectMeta: objMeta("c"), Data: map[string]string{"a": ""}, BinaryData: map[string][]byte{"b": nil}}
	sec := &corev1.Secret{ObjectMeta: objMeta("s"), Type: corev1.SecretTypeTLS, Data: map[string][]byte{"tls.crt": nil, "tls.key": nil}}
	for _, tc := range []struct {
		name  string
		table *registry.Table
		obj   runtime.Object
		cols  []string
		cells []any
	}{
		{"configmap", configMapTable(), cm, []string{"Name", "Data", "Age"}, []any{"c", int64(2)}},
		{"secret", secretTable(), sec, []string{"Name", "Type", "Data", "Age"}, []any{"s", "kubernetes.io/tls", int64(2)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, err := tc.table.ConvertToTable(context.Background(), tc.obj, nil)
			if err != nil {
				t.Fatal(err)
			}
			var cols []string
			for _, c := range tab.ColumnDefinitions {
				cols = append(cols, c.Name)
			}
			if strings.Join(cols, ",") != strings.Join(tc.cols, ",") {
				t.Errorf("columns %v, want %v", cols, tc.cols)
			}
			for i, want := range tc.cells {
				if got := tab.Rows[0].Cells[i]; got != want {
					t.Errorf("cell %d = %#v, want %#v", i, got, want)
				}
			}
		})
	}
}

func TestSecretFields(t *testing.T) {
	if got := secretFields(&corev1.Secret{Type: corev1.SecretTypeTLS})["type"]; got != "kubernetes.io/tls" {
		t.Errorf("type field %q", got)
	}
}
