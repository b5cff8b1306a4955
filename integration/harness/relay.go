package harness

import (
	"os"
	"runtime"
)

// DefaultRelay is the relay a proxy started by the tests uses when no
// relay setting is given, as its "session ended" lines name it: the event
// loop ("loop") on Linux, unless the test switch
// PGVERIFYPROXY_TEST_PORTABLE_RELAY=1 chose the portable relay, and the
// portable relay on every other system (see proxy/relay_linux.go).
func DefaultRelay() string {
	if runtime.GOOS == "linux" && os.Getenv("PGVERIFYPROXY_TEST_PORTABLE_RELAY") != "1" {
		return "loop"
	}
	return "portable"
}
