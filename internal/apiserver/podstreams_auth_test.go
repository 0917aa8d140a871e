package apiserver

import (
	"context"
	"testing"

	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"

	"github.com/duet-net/duet/internal/nodegraph"
	"github.com/duet-net/duet/internal/pki"
)

// TestPodStreamsAuthorization: exec, attach, port-forward and logs are
// for administrators. A node may not use them, even on its own pods (a
// compromised node would reach every pod's processes), and neither may
// the identity the server presents to agents, should it be used against
// the API.
func TestPodStreamsAuthorization(t *testing.T) {
	authz := newAuthorizer(nodegraph.New())
	admin := &user.DefaultInfo{Name: "duet-admin", Groups: []string{user.SystemPrivilegedGroup, user.AllAuthenticated}}
	agentClient := &user.DefaultInfo{Name: pki.AgentClientUser, Groups: []string{user.AllAuthenticated}}
	for _, sub := range []string{"exec", "attach", "portforward", "log"} {
		// GET for WebSocket clients and logs, POST (create) for SPDY.
		for _, verb := range []string{"get", "create"} {
			for _, tc := range []struct {
				who   string
				user  user.Info
				allow bool
			}{{"an administrator", admin, true}, {"a node", nodeUser("n1"), false}, {"the agent client identity", agentClient, false}} {
				d, reason, _ := authz.Authorize(context.Background(), authorizer.AttributesRecord{
					User: tc.user, Verb: verb, Namespace: "default", Resource: "pods", Subresource: sub, Name: "p", ResourceRequest: true,
				})
				if got := d == authorizer.DecisionAllow; got != tc.allow {
					t.Errorf("%s %s pods/%s: allowed = %v (%s), want %v", tc.who, verb, sub, got, reason, tc.allow)
				}
			}
		}
	}
}
