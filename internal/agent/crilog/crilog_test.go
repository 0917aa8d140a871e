package crilog

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)

// clock returns a clock that advances a second per reading.
func clock() func() time.Time {
	var n atomic.Int64
	return func() time.Time { return t0.Add(time.Duration(n.Add(1)-1) * time.Second) }
}

func create(t *testing.T, opts Options) (*File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "0.log")
	l, err := Create(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

func TestRecords(t *testing.T) {
	long := strings.Repeat("x", MaxLineSize+10)
	for _, tc := range []struct {
		name   string
		writes []string
		close  bool
		want   []string
	}{
		{"a whole line is one full record", []string{"hello\n"}, false,
			[]string{"2026-01-02T03:04:05.000000006Z stdout F hello"}},
		{"an empty line is a full record with no content", []string{"\n"}, false,
			[]string{"2026-01-02T03:04:05.000000006Z stdout F "}},
		{"lines written together share the time they were read", []string{"a\nb\n"}, false,
			[]string{"2026-01-02T03:04:05.000000006Z stdout F a", "2026-01-02T03:04:05.000000006Z stdout F b"}},
		{"a line in pieces is one record, stamped when it ends", []string{"he", "llo", "\n"}, false,
			[]string{"2026-01-02T03:04:07.000000006Z stdout F hello"}},
		{"an unterminated line waits for its end", []string{"no newline"}, false, nil},
		{"an unterminated line is a partial record at close", []string{"no newline"}, true,
			[]string{"2026-01-02T03:04:06.000000006Z stdout P no newline"}},
		{"a line longer than the limit is split into partial records", []string{long + "\n"}, false,
			[]string{"2026-01-02T03:04:05.000000006Z stdout P " + long[:MaxLineSize], "2026-01-02T03:04:05.000000006Z stdout F xxxxxxxxxx"}},
		{"held content reaching the limit is written as a partial record", []string{long}, false,
			[]string{"2026-01-02T03:04:05.000000006Z stdout P " + long[:MaxLineSize]}},
		{"content is kept byte for byte", []string{"tab\there \r\x00 ünïcode\n"}, false,
			[]string{"2026-01-02T03:04:05.000000006Z stdout F tab\there \r\x00 ünïcode"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, path := create(t, Options{Now: clock()})
			w := l.Stream(Stdout)
			for _, s := range tc.writes {
				if n, err := w.Write([]byte(s)); err != nil || n != len(s) {
					t.Fatalf("Write(%q) = %d, %v", s, n, err)
				}
			}
			if tc.close {
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
			}
			data, _ := os.ReadFile(path)
			var got []string
			if len(data) > 0 {
				got = strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("records:\n%q\nwant:\n%q", got, tc.want)
			}
		})
	}
}

func TestStreamsShareTheFile(t *testing.T) {
	l, path := create(t, Options{Now: func() time.Time { return t0 }})
	out, errw := l.Stream(Stdout), l.Stream(Stderr)
	_, _ = out.Write([]byte("out 1\n"))
	_, _ = errw.Write([]byte("err 1\n"))
	_, _ = out.Write([]byte("out 2\n"))
	var stdout, stderr bytes.Buffer
	if err := Read(context.Background(), path, &ReadOptions{}, nil, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if stdout.String() != "out 1\nout 2\n" || stderr.String() != "err 1\n" {
		t.Errorf("stdout %q, stderr %q", stdout.String(), stderr.String())
	}
}

func TestRotationKeepsMaxFiles(t *testing.T) {
	// Each record is 30 (timestamp) + 8 (" stdout ") + 2 ("F ") + 10 + 1 = 51 bytes.
	line := "0123456789\n"
	l, path := create(t, Options{MaxSize: 120, MaxFiles: 3, Now: func() time.Time { return t0 }})
	w := l.Stream(Stdout)
	for i := 0; i < 9; i++ {
		if _, err := w.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	// Two records fit in 120 bytes: 9 records make files of 2, 2, 2, 2, 1;
	// three are kept.
	for _, tc := range []struct {
		name    string
		records int
	}{{"0.log", 1}, {"0.log.1", 2}, {"0.log.2", 2}, {"0.log.3", -1}} {
		data, err := os.ReadFile(filepath.Join(filepath.Dir(path), tc.name))
		if tc.records < 0 {
			if !os.IsNotExist(err) {
				t.Errorf("%s exists (%v); only 3 files may be kept", tc.name, err)
			}
			continue
		}
		if got := strings.Count(string(data), "\n"); got != tc.records {
			t.Errorf("%s holds %d records, want %d", tc.name, got, tc.records)
		}
	}
	if err := RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(filepath.Dir(path)); len(left) != 0 {
		t.Errorf("RemoveAll left %v", left)
	}
}

func TestOneFileTruncatesOnRotation(t *testing.T) {
	l, path := create(t, Options{MaxSize: 60, MaxFiles: 1, Now: func() time.Time { return t0 }})
	w := l.Stream(Stdout)
	_, _ = w.Write([]byte("first line\n"))
	_, _ = w.Write([]byte("second one\n"))
	var out bytes.Buffer
	if err := Read(context.Background(), path, &ReadOptions{}, nil, &out, nil); err != nil {
		t.Fatal(err)
	}
	if out.String() != "second one\n" {
		t.Errorf("got %q", out.String())
	}
}

func TestBadOptions(t *testing.T) {
	dir := t.TempDir()
	for _, o := range []Options{{MaxSize: -1}, {MaxFiles: -2}} {
		if _, err := Create(filepath.Join(dir, "x.log"), o); err == nil {
			t.Errorf("Create with %+v succeeded", o)
		}
	}
}

func TestReadOptions(t *testing.T) {
	l, path := create(t, Options{Now: clock()})
	w, e := l.Stream(Stdout), l.Stream(Stderr)
	for _, s := range []string{"one\n", "two\n", "three\n", "four\n"} {
		_, _ = w.Write([]byte(s))
	}
	_, _ = e.Write([]byte("oops\n"))
	// Records at t0+0s, +1s, +2s, +3s (stdout) and +4s (stderr).
	for _, tc := range []struct {
		name         string
		opts         corev1.PodLogOptions
		now          time.Time
		stdout, errs string
	}{
		{"everything", corev1.PodLogOptions{}, t0, "one\ntwo\nthree\nfour\n", "oops\n"},
		{"tail counts records of both streams", corev1.PodLogOptions{TailLines: ptr.To[int64](2)}, t0, "four\n", "oops\n"},
		{"tail zero", corev1.PodLogOptions{TailLines: ptr.To[int64](0)}, t0, "", ""},
		{"limit bytes cuts a line", corev1.PodLogOptions{LimitBytes: ptr.To[int64](6)}, t0, "one\ntw", ""},
		{"since time", corev1.PodLogOptions{SinceTime: &metav1.Time{Time: t0.Add(2 * time.Second)}}, t0, "three\nfour\n", "oops\n"},
		{"since seconds count back from now", corev1.PodLogOptions{SinceSeconds: ptr.To[int64](2)}, t0.Add(5 * time.Second), "four\n", "oops\n"},
		{"timestamps", corev1.PodLogOptions{Timestamps: true, TailLines: ptr.To[int64](2)}, t0,
			"2026-01-02T03:04:08.000000006Z four\n", "2026-01-02T03:04:09.000000006Z oops\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if err := Read(context.Background(), path, NewReadOptions(&tc.opts, tc.now), nil, &stdout, &stderr); err != nil {
				t.Fatal(err)
			}
			if stdout.String() != tc.stdout || stderr.String() != tc.errs {
				t.Errorf("stdout %q stderr %q, want %q and %q", stdout.String(), stderr.String(), tc.stdout, tc.errs)
			}
		})
	}
}

// syncBuffer is a buffer a follower writes while the test reads it.
type syncBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{mu: make(chan struct{}, 1)} }
func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.Write(p)
}
func (b *syncBuffer) String() string {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFollowAcrossRotationUntilTheContainerStops(t *testing.T) {
	l, path := create(t, Options{MaxSize: 200, MaxFiles: 2})
	w := l.Stream(Stdout)
	_, _ = w.Write([]byte("before\n"))
	var running atomic.Bool
	running.Store(true)
	out := newSyncBuffer()
	done := make(chan error, 1)
	go func() {
		done <- Read(context.Background(), path, &ReadOptions{Follow: true}, running.Load, out, nil)
	}()
	waitFor(t, "the first line", func() bool { return out.String() == "before\n" })
	var want strings.Builder
	want.WriteString("before\n")
	// Enough lines to rotate several times; each waits to be seen so that
	// no rotation outruns the follower (the kubelet's reader drops what a
	// rotated-away file still held).
	for i := 0; i < 12; i++ {
		line := strings.Repeat(string(rune('a'+i)), 40) + "\n"
		_, _ = w.Write([]byte(line))
		want.WriteString(line)
		waitFor(t, "line "+line, func() bool { return out.String() == want.String() })
	}
	select {
	case err := <-done:
		t.Fatalf("follow stopped while the container runs: %v", err)
	default:
	}
	running.Store(false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not stop after the container stopped")
	}
}

func TestFollowStopsWithTheContext(t *testing.T) {
	l, path := create(t, Options{})
	_, _ = l.Stream(Stdout).Write([]byte("x\n"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Read(ctx, path, &ReadOptions{Follow: true}, func() bool { return true }, newSyncBuffer(), nil)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not stop when its context ended")
	}
}

func TestReadMissingFile(t *testing.T) {
	err := Read(context.Background(), filepath.Join(t.TempDir(), "none.log"), &ReadOptions{}, nil, &bytes.Buffer{}, nil)
	if err == nil {
		t.Fatal("reading a missing log succeeded")
	}
}

// FuzzStreamRoundTrip: whatever a container writes, in whatever pieces,
// reading its log back gives exactly those bytes.
func FuzzStreamRoundTrip(f *testing.F) {
	f.Add([]byte("hello\nworld\n"), uint8(3))
	f.Add([]byte("no newline at the end"), uint8(1))
	f.Add([]byte("\n\n\n"), uint8(0))
	f.Add(bytes.Repeat([]byte("y"), MaxLineSize*2+5), uint8(7))
	f.Add([]byte("2026-01-02T03:04:05Z stdout F looks like a record\n"), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, cut uint8) {
		path := filepath.Join(t.TempDir(), "0.log")
		l, err := Create(path, Options{MaxSize: 1 << 30})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		w := l.Stream(Stderr)
		step := int(cut) + 1
		for rest := data; len(rest) > 0; {
			n := min(step, len(rest))
			if _, err := w.Write(rest[:n]); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := Read(context.Background(), path, &ReadOptions{}, nil, nil, &got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), data) {
			t.Errorf("read back %q, wrote %q", got.Bytes(), data)
		}
	})
}

// BenchmarkWriter: one stream of 100-byte lines in 32 KiB reads, as a
// container writing as fast as it can reaches the agent.
func BenchmarkWriter(b *testing.B) {
	l, err := Create(filepath.Join(b.TempDir(), "0.log"), Options{MaxSize: 64 << 20, MaxFiles: 2})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	w := l.Stream(Stdout)
	chunk := bytes.Repeat([]byte(strings.Repeat("x", 99)+"\n"), 32<<10/100)
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		if _, err := w.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
}
