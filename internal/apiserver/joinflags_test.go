package apiserver

import (
	"slices"
	"strings"
	"testing"
)

func TestParseJoinURLs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []string
		want    []string
		wantErr string
	}{
		{"none", nil, nil, ""},
		{"one with a port", []string{"https://203.0.113.2:6443"}, []string{"https://203.0.113.2:6443"}, ""},
		{"comma-separated and repeated", []string{"https://a:1, https://b:2", "https://c:3/"}, []string{"https://a:1", "https://b:2", "https://c:3"}, ""},
		{"IPv6 without a port gets 6443", []string{"https://[2001:db8::1]"}, []string{"https://[2001:db8::1]:6443"}, ""},
		{"http is refused", []string{"http://a:6443"}, nil, "https://HOST:PORT"},
		{"a path is refused", []string{"https://a:6443/api"}, nil, "https://HOST:PORT"},
		{"a bare host is refused", []string{"203.0.113.2:6443"}, nil, ""},
		{"a port out of range", []string{"https://a:70000"}, nil, "1 to 65535"},
		{"credentials are refused", []string{"https://u:p@a:1"}, nil, "https://HOST:PORT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseJoinURLs(tc.in)
			if tc.wantErr != "" || tc.want == nil && err != nil {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "--join") {
					t.Fatalf("ParseJoinURLs(%q) = %v, %v; want an error naming --join containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("ParseJoinURLs(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func FuzzParseJoinURLs(f *testing.F) {
	f.Add("https://203.0.113.2:6443,https://[2001:db8::2]:6443")
	f.Add("https://a")
	f.Add("http://a:1")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseJoinURLs([]string{s})
		if err != nil {
			return
		}
		// What it returns parses again to itself.
		again, err := ParseJoinURLs(got)
		if err != nil || !slices.Equal(again, got) {
			t.Fatalf("ParseJoinURLs(%q) = %q, which parses to %q, %v", s, got, again, err)
		}
	})
}
