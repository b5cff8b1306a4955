package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufferSize); return &b }}

// aLongTimeAgo is a read deadline that makes Read return what the source
// has already buffered without waiting.
var aLongTimeAgo = time.Unix(1, 0)

// copier copies one direction of a goroutine-engine session, src to dst.
type copier struct {
	dst   net.Conn        // the closeOnce of the other side
	rw    *rawsock.Writer // writes to dst when it is a plaintext socket (fast path)
	src   net.Conn
	count *count

	// The fast path's state for a plaintext socket source (copy_linux.go;
	// empty elsewhere).
	socketCopy

	// Any other source is read into idle while waiting.
	idle []byte
	// stream: the Portable engine reads src, a plaintext socket, with
	// copyStream.
	stream bool
}

// newCopier returns the copier of one direction: the fast path's
// (copy_linux.go) unless portable, else the Portable engine's.
func newCopier(dst *closeOnce, src net.Conn, c *count, portable bool, recheck time.Duration) *copier {
	cp := &copier{dst: dst, src: src, count: c}
	if !portable {
		if cp.initFast(dst, recheck) {
			return cp
		}
	} else {
		// No buffer in user space: copyBuffered's look at what src has
		// already received would never find anything.
		_, cp.stream = src.(syscall.Conn)
	}
	cp.idle = make([]byte, idleBufferSize)
	return cp
}

// write writes b to dst and counts what was written. It blocks until dst
// took all of b: what a direction holds is bounded by its one buffer.
func (cp *copier) write(b []byte) error {
	var nw int
	var err error
	if cp.rw != nil {
		nw, err = cp.rw.Write(b)
	} else {
		nw, err = cp.dst.Write(b)
	}
	cp.count.add(nw)
	return err
}

// copyStream copies from a plaintext socket on the Portable engine: a
// blocking Read into the idle buffer, or into a pooled buffer after a Read
// that filled its buffer (see docs/design/relay.md).
func (cp *copier) copyStream() error {
	var bp *[]byte
	buf := cp.idle
	defer func() {
		if bp != nil {
			bufPool.Put(bp)
		}
	}()
	for {
		nr, rerr := cp.src.Read(buf)
		if nr > 0 {
			if werr := cp.write(buf[:nr]); werr != nil {
				return werr
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return nil
			}
			return rerr
		}
		switch full := nr == len(buf); {
		case full && bp == nil:
			bp = bufPool.Get().(*[]byte)
			buf = *bp
		case !full && bp != nil:
			bufPool.Put(bp)
			bp, buf = nil, cp.idle
		}
	}
}

// copyBuffered copies from any other source (TLS).
func (cp *copier) copyBuffered() error {
	for {
		nr, rerr := cp.src.Read(cp.idle)
		buf := cp.idle[:nr]
		var bp *[]byte
		if nr == len(cp.idle) && rerr == nil {
			// More may be buffered: take it too, and write it at once.
			bp = bufPool.Get().(*[]byte)
			big := *bp
			copy(big, buf)
			nr, rerr = cp.takeBuffered(big, nr)
			buf = big[:nr]
		}
		var werr error
		if len(buf) > 0 {
			werr = cp.write(buf)
		}
		if bp != nil {
			bufPool.Put(bp)
		}
		if werr != nil {
			return werr
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return nil
			}
			return rerr
		}
	}
}

// takeBuffered reads into buf[n:] what src has already received, without
// waiting, and returns the new length and the error that ended the source,
// if any. A source whose SetReadDeadline fails gives nothing more (net.Conn
// requires deadlines; every connection the proxy relays has them).
func (cp *copier) takeBuffered(buf []byte, n int) (int, error) {
	if cp.src.SetReadDeadline(aLongTimeAgo) != nil {
		return n, nil
	}
	var rerr error
	for n < len(buf) {
		m, err := cp.src.Read(buf[n:])
		n += m
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				rerr = err
			}
			break
		}
		if m == 0 {
			break
		}
	}
	// Failing to clear the deadline must end the copy: every Read would
	// time out at once.
	if err := cp.src.SetReadDeadline(time.Time{}); err != nil && rerr == nil {
		rerr = err
	}
	return n, rerr
}
