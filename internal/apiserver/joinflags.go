package apiserver

import (
	"fmt"
	"net/url"
	"strings"
)

// ParseJoinURLs checks --join: running servers' API URLs, https://HOST:PORT
// (comma-separated or repeated); the first that answers is joined.
func ParseJoinURLs(values []string) ([]string, error) {
	var out []string
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			u, err := url.Parse(s)
			if err != nil {
				return nil, fmt.Errorf("--join: %q is not a URL: %v", s, err)
			}
			if u.Scheme != "https" || u.Hostname() == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "" {
				return nil, fmt.Errorf("--join: %q must be a server's API URL, https://HOST:PORT", s)
			}
			port := u.Port()
			if port == "" {
				port = "6443"
			}
			var n int
			if _, err := fmt.Sscanf(port, "%d", &n); err != nil || n < 1 || n > 65535 || fmt.Sprint(n) != port {
				return nil, fmt.Errorf("--join: %q: port %q must be a number from 1 to 65535", s, u.Port())
			}
			host := u.Hostname()
			if strings.Contains(host, ":") {
				host = "[" + host + "]"
			}
			out = append(out, "https://"+host+":"+port)
		}
	}
	return out, nil
}
