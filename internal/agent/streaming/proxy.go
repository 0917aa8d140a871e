package streaming

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"time"
)

// PodDialer is what a Runtime does for the pods' HTTP proxy (the API
// server's pods/proxy and services/proxy): connect to a port of a pod
// bound to this node, at the pod's address, from the node's network
// namespace.
type PodDialer interface {
	DialPod(ctx context.Context, pod PodRef, port int32) (net.Conn, error)
}

// proxyPath is the agent's HTTP proxy to pods:
//
//	ANY /proxy/NAMESPACE/POD/SCHEME/PORT/PATH?QUERY
//
// sends the request, with its method, headers, body and query, to
// SCHEME://POD-IP:PORT/PATH (SCHEME http or https, whose certificate is
// not verified: pods serve what they like, as kube-apiserver's proxy
// to pods accepts). Upgrades (WebSocket) pass through.
const proxyPath = "/proxy/{namespace}/{pod}/{scheme}/{port}/"

func (h *handler) proxy(d PodDialer) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		pod := PodRef{Namespace: r.PathValue("namespace"), Name: r.PathValue("pod")}
		scheme := r.PathValue("scheme")
		port, err := strconv.ParseUint(r.PathValue("port"), 10, 16)
		if err != nil || port == 0 {
			writeError(w, BadRequest("port %q: not a port number", r.PathValue("port")))
			return
		}
		if scheme != "http" && scheme != "https" {
			writeError(w, BadRequest("scheme %q: only http and https are proxied", scheme))
			return
		}
		if err := h.rt.Check(pod, ""); err != nil {
			writeError(w, err)
			return
		}
		dial := func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialPod(ctx, pod, int32(port)) }
		rp := &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.Out.URL = &url.URL{
					Scheme: scheme, Host: pod.Name + ":" + strconv.Itoa(int(port)),
					Path: "/" + r.PathValue("path"), RawQuery: r.URL.RawQuery,
				}
				pr.Out.Host = pr.Out.URL.Host
			},
			Transport: &http.Transport{
				DialContext:           dial,
				TLSClientConfig:       &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // pods' certificates are their own
				ResponseHeaderTimeout: time.Minute,
				DisableKeepAlives:     true,
			},
			ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
				writeError(w, &Error{Code: http.StatusBadGateway, Message: "proxying to pod " + pod.String() + ": " + err.Error()})
			},
		}
		rp.ServeHTTP(w, r)
	}
}
