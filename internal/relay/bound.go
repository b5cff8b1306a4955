package relay

import "fmt"

// The bound on what one session can make the relay hold, whatever its
// peers do. The goroutine engines hold nothing but their buffers: their
// writes block, and a direction whose write blocks reads nothing more (a
// crypto/tls Read that must answer, a KeyUpdate say, waits for its write
// like any other). The loop's writes never block: what a socket does not
// take waits in the endpoint's pending output, and these are its rules.
const (
	// PauseAbove: the loop never reads a side while its own pending
	// output is above PauseAbove (crypto/tls writes from inside Read:
	// KeyUpdate answers), nor while its peer has any pending output; it
	// reads again once that output is written.
	PauseAbove = 32 << 10
	// MaxPending is the backstop: a write that would leave more than
	// MaxPending bytes pending on one side ends the session with
	// errPendingLimit. Under PauseAbove's rule a side holds at most
	// PauseAbove, one relayed read as TLS records (bufferSize plus record
	// overheads) and what crypto/tls answers for the records of one
	// transport read: far below MaxPending.
	MaxPending = 256 << 10
)

// bufferSize is the size of the pooled buffers (the goroutine engines',
// used only while data flows) and of each loop's one read buffer: four
// full TLS records.
const bufferSize = 64 << 10

// idleBufferSize is the per-direction buffer a waiting Read holds on a
// goroutine-engine source that is not a plain socket (TLS). Typical query
// answers fit.
const idleBufferSize = 2 << 10

// pendingLimitError is the loop's backstop error: side let more than
// MaxPending bytes wait.
type pendingLimitError struct{ side Side }

func (e pendingLimitError) Error() string {
	return fmt.Sprintf("relay: the %s is not reading: more than %d KiB waiting to be sent to it (the per-session bound)", e.side, MaxPending>>10)
}
