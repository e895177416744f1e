package activator

import (
	"bytes"
	"io"
	"sync"
	"sync/atomic"
)

// buffer is a pooled byte slice that holds a request body while anyone
// still reads it: the handler chain, and the HTTP transport that sends it
// upstream (which may finish after the response came back). Each reader
// holds a reference; the last release returns the buffer to the pool.
type buffer struct {
	b    []byte
	refs atomic.Int32
}

// maxPooledBuffer is the largest buffer kept for reuse; larger ones (rare
// bodies of megabytes) go back to the garbage collector.
const maxPooledBuffer = 4 << 20

var bufferPool = sync.Pool{New: func() any { return &buffer{b: make([]byte, 0, 16<<10)} }}

func getBuffer() *buffer {
	b := bufferPool.Get().(*buffer)
	b.b = b.b[:0]
	b.refs.Store(1)
	return b
}

func (b *buffer) retain() { b.refs.Add(1) }

func (b *buffer) release() {
	if b.refs.Add(-1) == 0 && cap(b.b) <= maxPooledBuffer {
		bufferPool.Put(b)
	}
}

// readFrom reads r to its end into the buffer; size is the expected length
// (the Content-Length, or -1), read in one allocation when it is known.
func (b *buffer) readFrom(r io.Reader, size int64) error {
	if size > 0 && int64(cap(b.b)) < size+1 {
		b.b = make([]byte, 0, size+1) // +1: the read that sees EOF
	}
	for {
		if len(b.b) == cap(b.b) {
			b.b = append(b.b, 0)[:len(b.b)]
		}
		n, err := r.Read(b.b[len(b.b):cap(b.b)])
		b.b = b.b[:len(b.b)+n]
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// sentBody is a request body handed to the HTTP transport. The transport
// always closes it, possibly after RoundTrip returned; Close releases the
// buffer that holds the bytes.
type sentBody struct {
	bytes.Reader
	owner *buffer
	once  sync.Once
}

func newSentBody(body []byte, owner *buffer) *sentBody {
	s := &sentBody{owner: owner}
	s.Reset(body)
	if owner != nil {
		owner.retain()
	}
	return s
}

func (s *sentBody) Close() error {
	s.once.Do(func() {
		if s.owner != nil {
			s.owner.release()
		}
	})
	return nil
}

// copyBuffers are the proxy's relay buffers.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
