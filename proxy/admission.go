package proxy

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
)

// Request codes of the packets a client may send first.
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
)

// tlsHandshakeRecord is the first byte of a TLS handshake record.
const tlsHandshakeRecord = 0x16

// alpnPostgres is PostgreSQL's ALPN protocol name.
const alpnPostgres = "postgresql"

// startupPacket is one length-prefixed packet of the startup phase.
type startupPacket struct {
	// raw is the whole packet, length word included, forwarded verbatim.
	raw []byte
	// code is the protocol version or request code.
	code uint32
}

func (p *startupPacket) body() []byte { return p.raw[4:] }

// isStartupMessage reports a StartupMessage of protocol major version 3, any
// minor version (the server answers unknown minors with
// NegotiateProtocolVersion, which the proxy relays unchanged).
func (p *startupPacket) isStartupMessage() bool { return p.code>>16 == 3 }

// readStartupPacket reads one startup-phase packet straight from r, with no
// buffering, so that nothing past it is consumed. Its length must lie in
// [8, maxStartupPacket].
func readStartupPacket(r io.Reader) (*startupPacket, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 8 || n > maxStartupPacket {
		return nil, protocolError("invalid length of startup packet (%d bytes; the limit is %d)", n, maxStartupPacket)
	}
	raw := make([]byte, n)
	copy(raw, hdr[:])
	if _, err := io.ReadFull(r, raw[4:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return &startupPacket{raw: raw, code: binary.BigEndian.Uint32(raw[4:8])}, nil
}

// startupParams decodes the parameters of a StartupMessage with pgproto3.
// Minor versions pgproto3 does not know are decoded as 3.0; the packet itself
// is forwarded untouched.
func startupParams(p *startupPacket) (map[string]string, error) {
	body := append([]byte(nil), p.body()...)
	if v := binary.BigEndian.Uint32(body); v != pgproto3.ProtocolVersion30 && v != pgproto3.ProtocolVersion32 {
		binary.BigEndian.PutUint32(body, pgproto3.ProtocolVersion30)
	}
	var sm pgproto3.StartupMessage
	if err := sm.Decode(body); err != nil {
		return nil, err
	}
	return sm.Parameters, nil
}

// cancelKey decodes a CancelRequest (any key length the protocol allows).
func cancelKey(p *startupPacket) (*pgproto3.CancelRequest, error) {
	var cr pgproto3.CancelRequest
	if err := cr.Decode(p.body()); err != nil {
		return nil, err
	}
	return &cr, nil
}

// prefixConn is a net.Conn whose first reads return prefix.
type prefixConn struct {
	net.Conn
	prefix []byte
}

// Underlying returns the wrapped connection once the prefix has been read
// (from then on prefixConn changes nothing), else nil: the relay's event
// loop looks through it (relay.Wrapper).
func (c *prefixConn) Underlying() net.Conn {
	if len(c.prefix) == 0 {
		return c.Conn
	}
	return nil
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// expectTLSHandshake reads the first byte after the proxy answered 'S'. A
// client that speaks TLS starts with a handshake record; anything else is
// plaintext sent (or injected) after the SSLRequest, which must never be
// taken as if it had come over TLS (CVE-2021-23214 class).
func expectTLSHandshake(c net.Conn) (net.Conn, error) {
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return nil, err
	}
	if b[0] != tlsHandshakeRecord {
		return nil, protocolError("received unencrypted data after SSL request (first byte 0x%02x where a TLS handshake must start); possible man-in-the-middle", b[0])
	}
	return &prefixConn{Conn: c, prefix: []byte{b[0]}}, nil
}

// describeFirstPacket names a packet code for error messages.
func describeFirstPacket(code uint32) string {
	switch code {
	case codeSSLRequest:
		return "SSLRequest"
	case codeGSSENCRequest:
		return "GSSENCRequest"
	case codeCancelRequest:
		return "CancelRequest"
	}
	return fmt.Sprintf("protocol %d.%d", code>>16, code&0xffff)
}

// admit reads the client's first packets: SSLRequest and GSSENCRequest are
// answered here, a direct TLS handshake (libpq 17's sslnegotiation=direct)
// is accepted, and the StartupMessage or CancelRequest that follows is
// returned.
func (ss *session) admit() (*startupPacket, error) {
	mode := ss.route.ClientTLS
	var first [1]byte
	if _, err := io.ReadFull(ss.client, first[:]); err != nil {
		return nil, err
	}
	var r io.Reader = io.MultiReader(bytes.NewReader(first[:]), ss.client)
	if first[0] == tlsHandshakeRecord {
		if mode == ClientTLSDisable {
			return nil, errQuiet{err: errors.New("client: direct TLS handshake, but this listener has client_tls=disable")}
		}
		if err := ss.startTLS(&prefixConn{Conn: ss.client, prefix: first[:]}, true); err != nil {
			return nil, err
		}
		r = ss.client
	}
	for {
		pkt, err := readStartupPacket(r)
		if err != nil {
			return nil, err
		}
		r = ss.client
		switch {
		case pkt.code == codeSSLRequest:
			if ss.tls {
				return nil, protocolError("SSLRequest received inside TLS")
			}
			if mode == ClientTLSDisable {
				if _, err := ss.client.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if _, err := ss.client.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			pc, err := expectTLSHandshake(ss.client)
			if err != nil {
				return nil, err
			}
			if err := ss.startTLS(pc, false); err != nil {
				return nil, err
			}
			r = ss.client
		case pkt.code == codeGSSENCRequest:
			if ss.tls {
				return nil, protocolError("GSSENCRequest received inside TLS")
			}
			if _, err := ss.client.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case pkt.code == codeCancelRequest:
			if _, err := cancelKey(pkt); err != nil {
				return nil, protocolError("malformed CancelRequest: %v", err)
			}
			return pkt, nil
		case pkt.isStartupMessage():
			if mode == ClientTLSRequire && !ss.tls {
				return nil, &clientError{
					Reason:  chain.ReasonClientTLSRequired,
					Message: "pgverifyproxy: this listener requires TLS (client_tls=require), and the client connected without it",
					Hint:    "connect with sslmode=require",
				}
			}
			return pkt, nil
		default:
			return nil, &clientError{
				Reason:  chain.ReasonUnsupportedProtocol,
				Message: "pgverifyproxy: unsupported frontend protocol (" + describeFirstPacket(pkt.code) + "): the proxy supports protocol 3",
			}
		}
	}
}

// startTLS runs the server side of the client's TLS handshake. The ALPN
// protocol "postgresql" is offered as PostgreSQL 17 does; a direct
// handshake must select it, as PostgreSQL 17 requires.
func (ss *session) startTLS(c net.Conn, direct bool) error {
	// On a rawsock.Conn, so that the event-loop relay can take the socket
	// over after the login (a TCP socket; anything else stays as it is).
	// The bytes read to recognise TLS come first (prefixConn).
	if pc, ok := c.(*prefixConn); ok {
		pc.Conn = rawsock.Wrap(pc.Conn)
	} else {
		c = rawsock.Wrap(c)
	}
	tc := tls.Server(c, ss.route.TLSConfig)
	if err := tc.Handshake(); err != nil {
		return errQuiet{err: errors.New("client: TLS handshake: " + err.Error())}
	}
	ss.client, ss.tls = tc, true
	if direct && tc.ConnectionState().NegotiatedProtocol != alpnPostgres {
		return protocolError("direct TLS connection without the ALPN protocol %q", alpnPostgres)
	}
	return nil
}

// errQuiet is a failure that cannot be reported to the client in protocol.
type errQuiet struct{ err error }

func (e errQuiet) Error() string { return e.err.Error() }
