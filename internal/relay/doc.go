// Package relay copies an authenticated PostgreSQL session's bytes both
// ways, parsing nothing, until one side ends; then it closes both.
//
// The proxy uses three names: NewPool (the engine and its settings),
// Pool.Relay (one session, start to end) and Pool.Stop. Each session runs
// on one of three engines, named the same in settings, logs, metrics and
// tests:
//
//   - Loop (Linux's default): both sockets leave Go's poller for an event
//     loop that owns them (loop_linux.go, handover_linux.go);
//   - Goroutine: two goroutines, one per direction; on Linux plaintext
//     sockets are read inside RawConn.Read with TCP_INQ and written with
//     rawsock (copy_linux.go). The loop's fallback for a session it cannot
//     take;
//   - Portable: nothing but net.Conn (copy.go), every other system's
//     engine, and selectable on Linux so the tests run it there too.
//
// Every rule is written once and every engine follows it:
//
//   - the end of a session (first end wins, half-close, linger, second
//     end): ending.go, ending.end;
//   - the upstream-first close: ending.go, CloseUpstreamFirst;
//   - byte counting: ending.go, count;
//   - back-pressure (never read a side whose own or whose peer's pending
//     output is above PauseAbove; a hard cap of MaxPending): bound.go, and
//     by construction on the goroutine engines, whose writes block;
//   - the TCP_INQ receive: sock_linux.go, inqReader;
//   - the non-blocking write loop: rawsock.WriteNonblock;
//   - the reset re-check of a TCP_INQ source: copy_linux.go, with
//     Options.Recheck;
//   - the hand-over of a socket to a loop (claim both, then commit both, so
//     a failure leaves nothing to undo): handover_linux.go.
//
// docs/design/relay.md has the design and the measurements behind it.
package relay
