// Package testpki supports the tests of the whole module, unit and
// integration alike, with what needs no PostgreSQL: a test PKI generated in
// memory (pki.go: NewPKI, NewRootCA, IssueLeaf, Pool, WritePEMFile), fake
// upstreams that answer the SSLRequest as scripted, to show what a bad or
// hostile server gets to see (fake.go: StartFakeUpstream, AnswerTLS,
// AnswerBytes), and a minimal PostgreSQL server built with pgproto3 for what
// a real one cannot be made to do (scripted.go, scram.go:
// StartScriptedServer). The PostgreSQL cluster of the integration tests is in
// integration/harness.
package testpki
