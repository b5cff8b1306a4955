package proxy

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
)

// testRelayModes are the relays the tests run on: the event loop (the
// default), the goroutine relay's fast path (its fallback), and the
// portable relay that every other system uses.
var testRelayModes = []relayMode{relayLoop, relayFast, relayPortable}

// setRelayRecheck sets relayRecheck for the test.
func setRelayRecheck(t *testing.T, d time.Duration) {
	old := relayRecheck
	relayRecheck = d
	t.Cleanup(func() { relayRecheck = old })
}

// TestRelayModesCopyLoops: each mode copies a plaintext TCP source and a
// TLS source with its own loops, so that a test of the portable relay
// cannot pass on the fast path.
func TestRelayModesCopyLoops(t *testing.T) {
	ln := rigListener(t)
	_, tcpSrc := connectLeg(t, ln, legTCP, false)
	_, tlsSrc := connectLeg(t, ln, legTLS, false)
	_, tcpDst := connectLeg(t, ln, legTCP, true)
	dst := &closeOnce{Conn: tcpDst}
	for _, tc := range []struct {
		mode                  relayMode
		src                   net.Conn
		raw, stream, idle, rw bool
	}{
		{relayFast, tcpSrc, true, false, false, true},
		{relayFast, tlsSrc, false, false, true, true},
		{relayPortable, tcpSrc, false, true, true, false},
		{relayPortable, tlsSrc, false, false, true, false},
	} {
		tc.rw = tc.rw && !portableRelaySwitch // the switch turns rawsock off too
		cp := newCopier(dst, tc.src, nil, tc.mode)
		if got := [4]bool{cp.raw != nil, cp.stream, cp.idle != nil, cp.rw != nil}; got != [4]bool{tc.raw, tc.stream, tc.idle, tc.rw} {
			t.Errorf("%s relay, %T source: raw, stream, idle buffer, rawsock writer = %v, want %v",
				tc.mode, tc.src, got, [4]bool{tc.raw, tc.stream, tc.idle, tc.rw})
		}
	}
}

// TestPortableRelaySwitch runs this test binary again with the test switch
// in its environment: the child must relay with the portable relay and
// wrap no socket with rawsock, and say so in its log at the first relay.
func TestPortableRelaySwitch(t *testing.T) {
	if os.Getenv(portableRelayEnv) == "1" {
		if defaultRelayMode != relayPortable {
			t.Fatalf("%s=1 but the default relay is the %s one", portableRelayEnv, defaultRelayMode)
		}
		ln := rigListener(t)
		c, _ := rigTCPPair(t, ln)
		if _, ok := rawsock.Wrap(c).(*rawsock.Conn); ok {
			t.Fatal("rawsock still wraps sockets under the test switch")
		}
		r := newRig(t, ln)
		r.start()
		r.app.Close()
		r.server.Close()
		<-r.done
		return
	}
	if defaultRelayMode != relayLoop {
		t.Fatalf("without %s the default relay is the %s one", portableRelayEnv, defaultRelayMode)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPortableRelaySwitch$", "-test.count=1")
	cmd.Env = append(os.Environ(), portableRelayEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child with %s=1: %v\n%s", portableRelayEnv, err, out)
	}
	if !strings.Contains(string(out), "relay: portable (test switch)") {
		t.Errorf("the child's output lacks the switch's log line:\n%s", out)
	}
}
