// Package crilog keeps container logs in the CRI log format that the
// kubelet and every CRI runtime use, so that `kubectl logs` behaves as on
// any Kubernetes node:
//
//	2016-10-06T00:17:09.669794202Z stdout F a whole line
//	2016-10-06T00:17:09.669794203Z stderr P the first 16 KiB of a longer line
//
// One File per container instance takes both of its output streams; it
// rotates at a size limit, keeping a number of older files beside it
// (PATH.1 the newest). Reading is the kubelet's own reader
// (k8s.io/cri-client/pkg/logs), which handles follow, tail, since,
// timestamps and byte limits.
package crilog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
)

// Stream names one of a container's output streams.
type Stream string

// The streams of the CRI log format.
const (
	Stdout Stream = "stdout"
	Stderr Stream = "stderr"
)

const (
	// DefaultMaxSize is the size at which a log file is rotated, the
	// kubelet's --container-log-max-size default.
	DefaultMaxSize = 10 << 20
	// DefaultMaxFiles is how many files a container instance keeps, the
	// current one included (the kubelet's --container-log-max-files).
	DefaultMaxFiles = 5
	// MaxLineSize is the longest content one record holds; a longer line
	// is split into partial (P) records, as CRI runtimes split it.
	MaxLineSize = 16 << 10
	// timeFormat is RFC 3339 with a fixed-width nanosecond fraction, so
	// records line up and sort as text.
	timeFormat = "2006-01-02T15:04:05.000000000Z07:00"
)

// Options configure a File.
type Options struct {
	// MaxSize is the size in bytes at which the file is rotated
	// (DefaultMaxSize if 0).
	MaxSize int64
	// MaxFiles is how many files to keep, the current one included
	// (DefaultMaxFiles if 0; at least 1).
	MaxFiles int
	// Now is the clock records are stamped with (time.Now if nil).
	Now func() time.Time
}

func (o Options) withDefaults() (Options, error) {
	if o.MaxSize == 0 {
		o.MaxSize = DefaultMaxSize
	}
	if o.MaxFiles == 0 {
		o.MaxFiles = DefaultMaxFiles
	}
	if o.MaxSize < 0 {
		return o, fmt.Errorf("log max size %d: must be positive", o.MaxSize)
	}
	if o.MaxFiles < 1 {
		return o, fmt.Errorf("log max files %d: must be at least 1", o.MaxFiles)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// File is the log of one container instance.
type File struct {
	path string
	opts Options

	mu   sync.Mutex
	f    *os.File
	size int64
	// err is the first write or rotation error; later writes report it.
	err error
}

// Create opens the log at path for appending (creating it if needed).
func Create(path string, opts Options) (*File, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	l := &File{path: path, opts: opts}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *File) open() error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening container log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("opening container log: %w", err)
	}
	l.f, l.size = f, st.Size()
	return nil
}

// Path is the file the log is written to now.
func (l *File) Path() string { return l.path }

// Stream returns a writer that takes a stream's raw output, in pieces of
// any size, and appends it to the log as records. Its Close writes what
// is left of an unterminated last line as a partial record.
func (l *File) Stream(s Stream) io.WriteCloser {
	return &streamWriter{log: l, stream: s}
}

// Close closes the file.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// write appends whole records, rotating first if they would take the file
// past its size limit.
func (l *File) write(records []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	if l.f == nil {
		return os.ErrClosed
	}
	if l.size > 0 && l.size+int64(len(records)) > l.opts.MaxSize {
		if err := l.rotate(); err != nil {
			l.err = err
			return err
		}
	}
	n, err := l.f.Write(records)
	l.size += int64(n)
	if err != nil {
		l.err = fmt.Errorf("writing container log: %w", err)
	}
	return l.err
}

// rotate renames PATH to PATH.1 (and PATH.i to PATH.i+1, dropping the
// oldest) and starts a new PATH. A reader following PATH sees it created
// again and reopens it.
func (l *File) rotate() error {
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("rotating container log: %w", err)
	}
	l.f = nil
	if l.opts.MaxFiles == 1 {
		if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotating container log: %w", err)
		}
	}
	for i := l.opts.MaxFiles - 1; i >= 1; i-- {
		from := l.path
		if i > 1 {
			from = l.path + "." + strconv.Itoa(i-1)
		}
		if err := os.Rename(from, l.path+"."+strconv.Itoa(i)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotating container log: %w", err)
		}
	}
	return l.open()
}

// RemoveAll removes the log at path and its rotated files.
func RemoveAll(path string) error {
	var errs []error
	for i := 0; ; i++ {
		p := path
		if i > 0 {
			p += "." + strconv.Itoa(i)
		}
		err := os.Remove(p)
		if errors.Is(err, os.ErrNotExist) {
			if i > 0 {
				return errors.Join(errs...)
			}
			continue
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
}

// streamWriter turns one stream's output into records.
type streamWriter struct {
	log    *File
	stream Stream
	// partial is the start of a line whose end has not come yet, shorter
	// than MaxLineSize.
	partial []byte
	out     []byte
	// stamp is the formatted time of the records being written.
	stamp []byte
}

func (w *streamWriter) Write(p []byte) (int, error) {
	n := len(p)
	// One timestamp for what arrived together: the time it was read.
	w.stamp = w.log.opts.Now().UTC().AppendFormat(w.stamp[:0], timeFormat)
	w.out = w.out[:0]
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.partial = append(w.partial, p...)
			for len(w.partial) >= MaxLineSize {
				w.record('P', w.partial[:MaxLineSize])
				w.partial = w.partial[MaxLineSize:]
			}
			// Keep the held part at the start of its buffer.
			w.partial = append(w.partial[:0:0], w.partial...)
			break
		}
		line := p[:i]
		p = p[i+1:]
		if len(w.partial) > 0 {
			line = append(w.partial, line...)
			w.partial = w.partial[:0]
		}
		for len(line) > MaxLineSize {
			w.record('P', line[:MaxLineSize])
			line = line[MaxLineSize:]
		}
		w.record('F', line)
	}
	if len(w.out) == 0 {
		return n, nil
	}
	if err := w.log.write(w.out); err != nil {
		return 0, err
	}
	return n, nil
}

func (w *streamWriter) record(tag byte, content []byte) {
	w.out = append(w.out, w.stamp...)
	w.out = append(w.out, ' ')
	w.out = append(w.out, w.stream...)
	w.out = append(w.out, ' ', tag, ' ')
	w.out = append(w.out, content...)
	w.out = append(w.out, '\n')
}

// Close writes an unterminated last line as a partial record: the
// content is exactly what the container wrote, with no newline added.
func (w *streamWriter) Close() error {
	if len(w.partial) == 0 {
		return nil
	}
	w.out = w.out[:0]
	w.stamp = w.log.opts.Now().UTC().AppendFormat(w.stamp[:0], timeFormat)
	w.record('P', w.partial)
	w.partial = nil
	return w.log.write(w.out)
}
