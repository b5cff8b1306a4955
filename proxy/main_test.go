package proxy

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine is left when they
// end: a session, a relay or a pre-dial pool that outlives its Server.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
