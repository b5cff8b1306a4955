package proxy

// A micro-benchmark of admission, runnable without PostgreSQL:
//
//	go test -run - -bench Admission -benchmem ./proxy
//
// The relay's benchmarks are in internal/relay.

import (
	"bytes"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// BenchmarkAdmission runs an SSLRequest-less StartupMessage through the
// admission path: parse only (readStartupPacket + startupParams), and
// session.admit over net.Pipe.
func BenchmarkAdmission(b *testing.B) {
	sm, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{
		"user": "app", "database": "appdb", "application_name": "psql", "client_encoding": "UTF8",
	}}).Encode(nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("parse", func(b *testing.B) {
		b.ReportAllocs()
		rd := bytes.NewReader(sm)
		for range b.N {
			rd.Reset(sm)
			pkt, err := readStartupPacket(rd)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := startupParams(pkt); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("admit", func(b *testing.B) {
		b.ReportAllocs()
		route := &Route{Name: "bench", ClientTLS: ClientTLSAllow}
		for range b.N {
			c, a := net.Pipe()
			go func() { c.Write(sm) }()
			ss := &session{route: route, client: a}
			pkt, err := ss.admit()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := startupParams(pkt); err != nil {
				b.Fatal(err)
			}
			c.Close()
			a.Close()
		}
	})
}
