// Package proxy accepts PostgreSQL clients on local listeners, connects each
// session to its route's upstream through a verified TLS dialer, relays the
// authentication phase (removing what cannot cross a TLS-terminating hop) and
// then copies bytes both ways.
//
// The package takes plain structs: it knows nothing of flags or config files.
// Config and Route (config.go) describe what to serve; New returns the Server.
//
// A session's phases, one file each:
//
//   - listen and accept: server.go (the Server: listeners, sessions, Reload,
//     Shutdown), with listen.go and listen_unix.go for listen addresses and
//     unix sockets;
//   - admission: admission.go reads the client's first packets, answers
//     SSLRequest and GSSENCRequest, accepts direct TLS (the certificate from
//     clienttls.go), and returns the StartupMessage or a CancelRequest;
//   - upstream dial: Server.upstreamConn (server.go) dials through the route's
//     Dial (in the binary, a chain.Dialer's) or takes a pre-dialled
//     connection (prewarm.go);
//   - auth phase: passthrough.go relays the client's own login, removing
//     SCRAM-SHA-256-PLUS, or hands over to the proxy's own login (login.go:
//     the client's or a stored password, SCRAM with channel binding to the
//     verified server);
//   - relay: internal/relay copies bytes both ways, parsing nothing, on the
//     engine of the relay setting (relay.go names them): by default, on
//     Linux, an event loop that owns both sockets; the proxy hands it the
//     session under its lock (Server.relayRegister), so that Close never
//     meets a socket half handed over.
//
// session.go runs those phases for one connection, forwards CancelRequests
// and refuses what fails before the relay with a FATAL error (errors.go).
// startup.go bounds the connections before admission
// (max_startup_connections).
// observe.go is the Observer that metrics and health are fed through.
package proxy
