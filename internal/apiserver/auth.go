package apiserver

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/request/bearertoken"
	"k8s.io/apiserver/pkg/authentication/request/union"
	x509request "k8s.io/apiserver/pkg/authentication/request/x509"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"

	"github.com/duet-net/duet/internal/nodegraph"
)

// newAuthenticator accepts client certificates signed by the cluster CA
// (CN is the user, O the groups), bearer tokens that tokens accepts
// (ServiceAccount tokens) and, for the health and version endpoints only,
// requests without credentials. Any other anonymous request is refused
// with 401.
func newAuthenticator(ca *x509.Certificate, tokens authenticator.Token) authenticator.Request {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	certs := x509request.New(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, x509request.CommonNameUserConversion)
	return union.New(certs, bearertoken.New(tokens), authenticator.RequestFunc(anonymousHealth))
}

func isPublicPath(path string) bool {
	for _, p := range []string{"/healthz", "/readyz", "/livez"} {
		if path == p || strings.HasPrefix(path, p+"/") {
			return true
		}
	}
	return path == "/version" || path == "/version/"
}

func anonymousHealth(req *http.Request) (*authenticator.Response, bool, error) {
	if !isPublicPath(req.URL.Path) || req.Header.Get("Authorization") != "" {
		return nil, false, nil
	}
	return &authenticator.Response{User: &user.DefaultInfo{Name: user.Anonymous, Groups: []string{user.AllUnauthenticated}}}, true, nil
}

// newAuthorizer allows system:masters everything, nodes what
// authorizeNode allows them (graph tells which objects their pods refer
// to), anyone the public endpoints, and authenticated users the discovery
// documents; everything else is forbidden.
func newAuthorizer(graph *nodegraph.Graph) authorizer.Authorizer {
	return authorizer.AuthorizerFunc(func(ctx context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
		u := a.GetUser()
		if u == nil {
			return authorizer.DecisionDeny, "no user", nil
		}
		groups := u.GetGroups()
		if slices.Contains(groups, user.SystemPrivilegedGroup) {
			return authorizer.DecisionAllow, "", nil
		}
		if node, ok := NodeName(u); ok {
			if d, reason := authorizeNode(ctx, graph, node, a); d != authorizer.DecisionNoOpinion {
				return d, reason, nil
			}
		}
		if !a.IsResourceRequest() && a.GetVerb() == "get" {
			path := a.GetPath()
			if isPublicPath(path) {
				return authorizer.DecisionAllow, "", nil
			}
			if u.GetName() != user.Anonymous && (path == "/api" || path == "/apis" || strings.HasPrefix(path, "/api/") || strings.HasPrefix(path, "/apis/") || strings.HasPrefix(path, "/openapi/")) {
				return authorizer.DecisionAllow, "", nil
			}
		}
		return authorizer.DecisionDeny, fmt.Sprintf("user %q may not %s %s", u.GetName(), a.GetVerb(), describe(a)), nil
	})
}

func describe(a authorizer.Attributes) string {
	if !a.IsResourceRequest() {
		return a.GetPath()
	}
	r := a.GetResource()
	if a.GetSubresource() != "" {
		r += "/" + a.GetSubresource()
	}
	if a.GetNamespace() != "" {
		return r + " in namespace " + a.GetNamespace()
	}
	return r
}
