package relay

import (
	"errors"
	"net"
	"testing"
	"time"
)

// TestEndingTable walks the end-of-session table every engine follows.
func TestEndingTable(t *testing.T) {
	reset := errors.New("read: connection reset")
	type end struct {
		from Side
		err  error
		want step
	}
	for _, tc := range []struct {
		name     string
		ends     []end
		expire   bool // the linger runs out after the first end
		closedBy Side
		err      error
	}{
		{name: "error first closes both", ends: []end{{Client, reset, stepCloseBoth}, {Upstream, net.ErrClosed, stepOver}}, closedBy: Client, err: reset},
		{name: "clean first passes the EOF on", ends: []end{{Upstream, nil, stepPassEOF}, {Client, nil, stepOver}}, closedBy: Upstream},
		{name: "second end's error kept after a clean first", ends: []end{{Client, nil, stepPassEOF}, {Upstream, reset, stepOver}}, closedBy: Client, err: reset},
		{name: "our own close is no error", ends: []end{{Client, nil, stepPassEOF}, {Upstream, net.ErrClosed, stepOver}}, closedBy: Client},
		{name: "after the linger ran out the second error is ours", ends: []end{{Client, nil, stepPassEOF}, {Upstream, reset, stepOver}}, expire: true, closedBy: Client},
		{name: "first error wins over the second", ends: []end{{Upstream, reset, stepCloseBoth}, {Client, errors.New("other"), stepOver}}, closedBy: Upstream, err: reset},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e ending
			fired := make(chan struct{}, 1)
			for i, x := range tc.ends {
				if got := e.end(x.from, x.err, time.Hour, func() { fired <- struct{}{} }); got != x.want {
					t.Fatalf("end %d: step %d, want %d", i, got, x.want)
				}
				if i == 0 && tc.expire {
					if !e.expire() {
						t.Fatal("the linger ran out with one direction still running, but expire says nothing to close")
					}
				}
			}
			if e.expire() {
				t.Error("expire after both ends asks for a close")
			}
			var st Stats
			e.stats(&st)
			if st.ClosedBy != tc.closedBy || !errors.Is(st.Err, tc.err) || (tc.err == nil && st.Err != nil) {
				t.Errorf("closed by %q with %v, want %q with %v", st.ClosedBy, st.Err, tc.closedBy, tc.err)
			}
		})
	}
}

// TestEndingAbort: a session closed from outside reads as closed by the
// upstream with net.ErrClosed, unless a direction had ended first.
func TestEndingAbort(t *testing.T) {
	var e ending
	e.abort()
	if e.first != Upstream || !errors.Is(e.err, net.ErrClosed) {
		t.Errorf("abort of a running session: %q %v", e.first, e.err)
	}
	var f ending
	f.end(Client, nil, time.Hour, func() {})
	f.abort()
	if f.first != Client || f.err != nil {
		t.Errorf("abort during the linger: %q %v, want the client's clean end", f.first, f.err)
	}
}
