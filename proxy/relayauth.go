package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// AuthMode says who authenticates to the upstream.
type AuthMode string

const (
	// AuthPassthrough relays the client's own authentication exchange
	// (the default): the proxy never sees a password, but SCRAM channel
	// binding cannot cross it.
	AuthPassthrough AuthMode = "passthrough"
	// AuthRelay makes the proxy log in upstream itself with the password
	// the client gives it (or a stored one), with SCRAM channel binding to
	// the verified server when the server offers it.
	AuthRelay AuthMode = "relay"
)

// ParseAuthMode validates a mode name; "" means passthrough.
func ParseAuthMode(s string) (AuthMode, error) {
	switch AuthMode(s) {
	case "", AuthPassthrough:
		return AuthPassthrough, nil
	case AuthRelay:
		return AuthRelay, nil
	}
	return "", fmt.Errorf("auth must be passthrough (relay the client's own login) or relay (the proxy logs in upstream with the client's password), not %q", s)
}

// ParseChannelBinding validates the channel binding setting of relay mode.
func ParseChannelBinding(s string) (string, error) {
	switch s {
	case "":
		return "prefer", nil
	case "prefer", "require", "disable":
		return s, nil
	}
	return "", fmt.Errorf("channel_binding must be prefer, require or disable, not %q", s)
}

// relayBaseConfig is the pgconn configuration every relay login starts
// from. pgconn.ParseConfig also reads PG* variables and service files: the
// connection string pins what it could take from them (no TLS of pgconn's
// own, no password file lookup), and loginUpstream sets every other field
// that matters. It is parsed once, when the route is validated.
func relayBaseConfig() (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig("host=upstream port=5432 sslmode=disable sslcertmode=disable sslrootcert='' sslcert='' sslkey='' user=relay password=unused")
	if err != nil {
		return nil, fmt.Errorf("auth relay: preparing the login configuration (check PG* environment variables): %w", err)
	}
	return cfg, nil
}

// relayLogin is the outcome of an upstream login done by the proxy.
type relayLogin struct {
	conn net.Conn
	// toClient is what the client must receive next: AuthenticationOk,
	// ParameterStatus, BackendKeyData, notices and ReadyForQuery, as the
	// server sent them.
	toClient []byte
	// mechanism is how the proxy authenticated (for the log).
	mechanism string
}

// askPassword asks the client for its password in clear on the local hop
// (every client generation answers AuthenticationCleartextPassword) and
// returns it; the caller zeroes it.
func askPassword(client io.ReadWriter) ([]byte, error) {
	req, _ := (&pgproto3.AuthenticationCleartextPassword{}).Encode(nil)
	if _, err := client.Write(req); err != nil {
		return nil, fmt.Errorf("client: asking for the password: %w", err)
	}
	m, err := readClientAuth(client, "password", "a password message")
	if err != nil {
		return nil, err
	}
	body := m.body()
	end := bytes.IndexByte(body, 0)
	if end < 0 {
		zero(m.raw)
		return nil, protocolError("malformed password message")
	}
	pw := make([]byte, end)
	copy(pw, body[:end])
	zero(m.raw)
	return pw, nil
}

// zero overwrites b.
func zero(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

// recorder keeps every byte the upstream sent during the login, so that
// the client gets the server's own messages byte for byte.
type recorder struct {
	r   io.Reader
	buf bytes.Buffer
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.buf.Write(p[:n])
	return n, err
}

// loginUpstream logs in to the route's upstream as the client's user and
// database, with its startup parameters and protocol version, over the
// route's verified TLS connection. One attempt only: a wrong password is
// not retried.
func (ss *session) loginUpstream(ctx context.Context, pkt *startupPacket, params map[string]string, password []byte) (*relayLogin, error) {
	r := ss.route
	cfg := r.relayBase.Copy()
	cfg.Host, cfg.Port = "upstream", 5432 // only in pgconn's messages; DialFunc decides
	cfg.User, cfg.Database = params["user"], params["database"]
	cfg.Password = string(password)
	cfg.TLSConfig, cfg.Fallbacks = nil, nil // the conn from Dial is already verified TLS
	cfg.SSLNegotiation = ""
	cfg.ConnectTimeout = 0 // ctx carries the startup deadline
	cfg.RequireAuth = ""
	cfg.SSLCertMode = "disable"
	cfg.ChannelBinding = r.ChannelBinding
	cfg.ValidateConnect, cfg.AfterConnect = nil, nil
	cfg.OAuthTokenProvider = nil
	cfg.KerberosSrvName, cfg.KerberosSpn = "", ""
	cfg.RuntimeParams = map[string]string{}
	for k, v := range params {
		if k == "user" || k == "database" {
			continue
		}
		cfg.RuntimeParams[k] = v
	}
	// The proxy asks for 3.2 when the client asked for 3.2 or later, else
	// 3.0 (pgconn knows no other minor versions); the client learns the
	// outcome from the server's NegotiateProtocolVersion, or from one the
	// proxy writes when it asked for less than the client did.
	clientMinor := binary.BigEndian.Uint32(pkt.body()) & 0xffff
	askedMinor := uint32(0)
	cfg.MaxProtocolVersion = "3.0"
	if clientMinor >= 2 {
		askedMinor, cfg.MaxProtocolVersion = 2, "3.2"
	}
	cfg.MinProtocolVersion = "3.0"
	cfg.LookupFunc = func(ctx context.Context, host string) ([]string, error) { return []string{host}, nil }
	var dialErr error
	cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
		c, warm, err := ss.s.upstreamConn(ctx, r)
		if err != nil {
			dialErr = err
			return nil, err
		}
		if warm {
			ss.log = ss.log.With("prewarmed", true)
		}
		if _, ok := c.(*tls.Conn); !ok {
			// Channel binding needs the TLS connection itself.
			c.Close()
			dialErr = errors.New("relay login: the upstream connection is not TLS")
			return nil, dialErr
		}
		return c, nil
	}
	rec := &recorder{}
	var sent bytes.Buffer // what the proxy sent: to name the SASL mechanism it used
	cfg.BuildFrontend = func(rd io.Reader, w io.Writer) *pgproto3.Frontend {
		rec.r = rd
		return pgproto3.NewFrontend(rec, io.MultiWriter(w, &sent))
	}
	cfg.OnNotice, cfg.OnNotification = nil, nil

	pc, err := pgconn.ConnectConfig(ctx, cfg)
	cfg.Password = ""
	if err != nil {
		if dialErr != nil {
			return nil, ss.dialFailed(ctx, dialErr)
		}
		// The server's own error (28P01 ...) goes to the client as it is.
		if raw := lastMessage(rec.buf.Bytes(), 'E'); raw != nil {
			return nil, &upstreamRejected{raw: raw, err: err}
		}
		return nil, &ClientError{Code: codeConnectionFailure, Cause: err, Reason: "relay_login",
			Message: fmt.Sprintf("pgverifyproxy: logging in to upstream %s for the client: %v", r.UpstreamAddr, err),
			Hint:    relayLoginHint(r, err)}
	}
	toClient, mech, err := handOver(rec.buf.Bytes())
	if err != nil {
		pc.Close(context.Background())
		return nil, err
	}
	hj, err := pc.Hijack()
	if err != nil {
		pc.Close(context.Background())
		return nil, fmt.Errorf("relay login: taking over the connection: %w", err)
	}
	if mech == "SCRAM-SHA-256" {
		// The mechanism pgconn actually chose, from its SASLInitialResponse.
		if m := saslMechanism(sent.Bytes()); m != "" {
			mech = m
		}
	}
	zero(sent.Bytes())
	if clientMinor != askedMinor && lastMessage(toClient, 'v') == nil {
		v, _ := (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 3<<16 | askedMinor}).Encode(nil)
		toClient = append(v, toClient...)
	}
	return &relayLogin{conn: hj.Conn, toClient: toClient, mechanism: mech}, nil
}

// relayLoginHint says what to do about a login the proxy could not make.
func relayLoginHint(r *Route, err error) string {
	if strings.Contains(err.Error(), "channel binding") {
		return "this route has channel_binding require, and the server did not authenticate with SCRAM-SHA-256-PLUS: check the user's password is stored as SCRAM, or use channel_binding prefer"
	}
	return "see the server's log; the proxy made one login attempt"
}

// upstreamRejected is the server's ErrorResponse to the proxy's login.
type upstreamRejected struct {
	raw []byte
	err error
}

func (e *upstreamRejected) Error() string {
	return "upstream rejected the relay login: " + e.err.Error()
}
func (e *upstreamRejected) Unwrap() error { return e.err }

// handOver picks, from the bytes the server sent during the login, what the
// client must see: everything from AuthenticationOk on (ParameterStatus,
// BackendKeyData, notices, ReadyForQuery), plus NegotiateProtocolVersion
// and notices from before it. It also names the authentication method.
func handOver(b []byte) (out []byte, mechanism string, err error) {
	mechanism = "trust"
	seenOK := false
	for len(b) > 0 {
		if seenOK {
			// Everything after AuthenticationOk goes to the client as it
			// came, a message the login read only in part included: the
			// raw relay continues the stream.
			out = append(out, b...)
			break
		}
		m, rest, ok := nextMessage(b)
		if !ok {
			return nil, "", errors.New("relay login: truncated message from the server")
		}
		b = rest
		switch {
		case m[0] == 'R' && len(m) >= 9:
			switch binary.BigEndian.Uint32(m[5:9]) {
			case authOK:
				seenOK = true
				out = append(out, m...)
			case authCleartextPassword:
				mechanism = "password"
			case authMD5Password:
				mechanism = "md5"
			case authSASL:
				mechanism = "SCRAM-SHA-256"
			}
		case m[0] == 'v', m[0] == 'N':
			out = append(out, m...)
		}
	}
	if !seenOK {
		return nil, "", errors.New("relay login: the server never sent AuthenticationOk")
	}
	return out, mechanism, nil
}

// nextMessage splits the first complete typed message (type byte, length,
// body) off b; ok is false when b does not start with one.
func nextMessage(b []byte) (msg, rest []byte, ok bool) {
	if len(b) < 5 {
		return nil, b, false
	}
	n := int(binary.BigEndian.Uint32(b[1:5]))
	if n < 4 || len(b) < 1+n {
		return nil, b, false
	}
	return b[:1+n], b[1+n:], true
}

// lastMessage returns the last message of type typ in b.
func lastMessage(b []byte, typ byte) []byte {
	var last []byte
	for m, rest, ok := nextMessage(b); ok; m, rest, ok = nextMessage(rest) {
		if m[0] == typ {
			last = m
		}
	}
	return last
}

// saslMechanism returns the mechanism of the SASLInitialResponse among the
// bytes the proxy sent (the StartupMessage first, then typed messages).
func saslMechanism(b []byte) string {
	if len(b) < 4 {
		return ""
	}
	n := int(binary.BigEndian.Uint32(b))
	if n < 4 || n > len(b) {
		return ""
	}
	for m, rest, ok := nextMessage(b[n:]); ok; m, rest, ok = nextMessage(rest) {
		if m[0] == 'p' {
			body := m[5:]
			if i := bytes.IndexByte(body, 0); i > 0 {
				return string(body[:i])
			}
			return ""
		}
	}
	return ""
}
