package roottest

import (
	"bytes"
	"sync"
)

// Buffer is a bytes.Buffer that a command's output goroutine may write while
// the test polls it: os/exec copies a non-*os.File Stderr on a goroutine of
// its own, so a plain bytes.Buffer read before Wait is a data race.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
