package harness

import (
	"crypto/sha256"
	"hash"
)

// SHA256Writer hashes (SHA-256) and counts what is written to it: how a
// test tells that a stream, such as a COPY TO STDOUT, arrived whole.
type SHA256Writer struct {
	h hash.Hash
	n int64
}

// NewSHA256Writer returns an empty SHA256Writer.
func NewSHA256Writer() *SHA256Writer { return &SHA256Writer{h: sha256.New()} }

// Write hashes and counts p.
func (w *SHA256Writer) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return w.h.Write(p)
}

// Len is the number of bytes written.
func (w *SHA256Writer) Len() int64 { return w.n }

// Sum is the SHA-256 of the bytes written.
func (w *SHA256Writer) Sum() []byte { return w.h.Sum(nil) }
