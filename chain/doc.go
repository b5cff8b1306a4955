// Package chain is the upstream side of pgverifyproxy's trust: it reaches a
// PostgreSQL server over TLS, finds out what the server presents, decides
// what to trust, keeps that as a pin and verifies every connection against
// it as libpq's sslmode=verify-full would. The proxy, check and the chain
// commands all go through it, so they agree on what is trusted and say the
// same thing when it is not.
//
// The phases, in the order a first connection meets them:
//
//   - fetch (fetch.go): Fetch makes the one handshake that does not verify,
//     to capture what the server presents (Fetched). It starts, as every
//     connection does, through a Dialer (dial.go: the SSLRequest or
//     PostgreSQL 17's direct TLS; the client certificate in clientcert.go).
//   - complete (aia.go): a Completer fetches the intermediates a server does
//     not send from the certificates' AIA caIssuers URLs, never from this
//     machine or a private network unless allowed (aia_guard.go), and
//     remembers those of verified paths (aia_cache.go).
//   - decide (trust.go): Decide chooses the anchors to pin under a Policy:
//     a root of the system trust store (SystemRoots, sysroots.go), a CA
//     file, or what the server presents (trust on first use).
//     FetchAndDecide fetches, completes and decides in one call.
//   - pin (pin.go, pindir.go, pintrust.go): a PinStore writes a Pin as a PEM
//     bundle that libpq reads too; a PinTrust serves a route's pin, fetching
//     the first one, and a LiveTrust (livetrust.go) serves the system trust
//     store at every connection instead.
//   - verify (verify.go, hostname.go): a Verifier checks each handshake's
//     chain against the pinned anchors with libpq's host-name rules, and
//     reports a chain that no longer leads to them as a changed identity.
//
// RouteTrust (route.go) puts these together for one route, from a
// RouteConfig. Inspect (inspect.go) dials as the proxy does and says what it
// found, for check and the chain commands. Whatever fails, Explain
// (reason.go) turns the error (a DialError, TrustError or VerifyError) into a
// Reason, the one word of logs and metrics, and the advice the user gets;
// text.go quotes what a certificate says before it is shown.
//
// The trust model behind these rules: docs/trust-model.md.
package chain
