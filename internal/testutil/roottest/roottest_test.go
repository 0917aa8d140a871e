package roottest

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func TestMissing(t *testing.T) {
	found := func(string) (string, error) { return "/usr/bin/x", nil }
	absent := func(name string) (string, error) {
		if name == "nft" {
			return "", errors.New("not found")
		}
		return "/usr/sbin/" + name, nil
	}
	for _, c := range []struct {
		name  string
		euid  int
		tools []string
		look  func(string) (string, error)
		want  string
	}{
		{"root with every tool runs", 0, []string{"ip", "nft"}, found, ""},
		{"root and no tools asked runs", 0, nil, absent, ""},
		{"not root is named first", 1000, []string{"nft"}, absent, "needs root"},
		{"a missing tool is named", 0, []string{"ip", "nft"}, absent, "needs nft on PATH"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := missing(c.euid, c.tools, c.look)
			if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
				t.Errorf("missing(%d, %v) = %q, want %q", c.euid, c.tools, got, c.want)
			}
		})
	}
}

func TestPollReturnsOnceTheConditionHolds(t *testing.T) {
	n := 0
	if err := Poll(time.Minute, func() error {
		if n++; n < 3 {
			return ErrNotYet
		}
		return nil
	}); err != nil || n != 3 {
		t.Fatalf("Poll = %v after %d calls, want nil after 3", err, n)
	}
}

func TestPollGivesTheLastErrorAtTheDeadline(t *testing.T) {
	last := errors.New("the last word")
	err := Poll(20*time.Millisecond, func() error { return last })
	if !errors.Is(err, last) {
		t.Fatalf("Poll = %v, want it to wrap %v", err, last)
	}
}

func TestNetNSIsMadeAndRemoved(t *testing.T) {
	var name string
	t.Run("make", func(t *testing.T) {
		name = NetNS(t, "duetroottest-", "a")
		Do(t, name, func() error {
			lo, err := net.InterfaceByName("lo")
			if err != nil {
				return err
			}
			if lo.Flags&net.FlagUp == 0 {
				return errors.New("lo is down in a fresh namespace")
			}
			return nil
		})
		if left, err := Leftovers("duetroottest-"); err != nil || len(left) != 1 || left[0] != name {
			t.Errorf("Leftovers while the test runs = %v, %v; want [%s]", left, err, name)
		}
	})
	if t.Skipped() || name == "" {
		return
	}
	if left, err := Leftovers("duetroottest-"); err != nil || len(left) != 0 {
		t.Errorf("Leftovers after the subtest = %v, %v; want none", left, err)
	}
}
