// Package harness supports the integration tests and the demo of
// pgverifyproxy: it starts a real PostgreSQL server with TLS on a free
// loopback port (as the unprivileged "postgres" user when running as root),
// runs and stops processes, and prepares Wine for the Windows binary. The
// test PKI and the scripted fake upstreams, which unit tests use too, are in
// internal/testpki.
package harness
