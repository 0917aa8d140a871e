package podroot

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// RewriteFiles writes the pod's /etc/hosts and /etc/resolv.conf anew from
// s, for a running pod whose addresses or cluster DNS servers changed (a
// family added to the cluster or taken from it). Each file is rewritten
// in place (see rewriteInPlace): the containers see it through a bind
// mount of its inode, which a file renamed over it would leave behind
// with the old content. A world removed meanwhile is not made again.
func (r *Root) RewriteFiles(s *Spec) error {
	if s.UID != r.UID {
		return fmt.Errorf("rewriting the files of pod %s with the spec of pod %s", r.UID, s.UID)
	}
	names, err := PodNames(s)
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", s.Namespace, s.Name, err)
	}
	hosts, resolv, err := renderFiles(s, names)
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", s.Namespace, s.Name, err)
	}
	defer lockUID(r.UID)()
	etc := filepath.Join(r.base, podsName, r.UID, "etc")
	for _, f := range []struct {
		name string
		data []byte
	}{{"hosts", hosts}, {"resolv.conf", resolv}} {
		if err := rewriteInPlace(filepath.Join(etc, f.name), f.data); err != nil {
			return fmt.Errorf("pod %s/%s: /etc/%s: %w", s.Namespace, s.Name, f.name, err)
		}
	}
	return nil
}

// rewriteInPlace replaces the content of the existing file at path with
// data, keeping the file (its inode) itself. A reader meanwhile sees the
// old content, or data followed by newlines: data is written over the
// start of the file padded with newlines to the old length, then the file
// is cut to data's length. Blank lines mean nothing in hosts(5) or
// resolv.conf(5), so a resolver never reads a line cut in two.
func rewriteInPlace(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	old, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	if bytes.Equal(old, data) {
		return nil
	}
	buf := data
	if len(old) > len(data) {
		buf = append(bytes.Clone(data), bytes.Repeat([]byte{'\n'}, len(old)-len(data))...)
	}
	if _, err := f.WriteAt(buf, 0); err != nil {
		return err
	}
	if err := f.Truncate(int64(len(data))); err != nil {
		return err
	}
	return f.Close()
}
