// Package harness supports the integration tests and the demo of
// pgverifyproxy: it generates a test PKI in memory, starts a real
// PostgreSQL server with TLS on a free loopback port (as the unprivileged
// "postgres" user when running as root), and provides scripted fake
// upstream servers.
package harness
