package harness

import "runtime"

// DefaultRelay is the relay engine a proxy started by the tests uses when
// no relay setting is given, as its "session ended" lines name it: the
// event loop ("loop") on Linux, the portable engine on every other system
// (internal/relay's Engine.OnThisSystem).
func DefaultRelay() string {
	if runtime.GOOS == "linux" {
		return "loop"
	}
	return "portable"
}
