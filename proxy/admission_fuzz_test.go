package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/internal/relay"
)

// This file holds the fuzz target of client admission and the helpers the
// proxy package's fuzz targets share. Seeds: testdata/fuzz/FuzzAdmission;
// PGVP_FUZZ_WRITE_SEEDS=1 go test -run '^FuzzAdmission$' ./proxy rewrites
// the generated ones.

// fzTLS is the client-facing TLS configuration of the fuzz routes: one
// certificate for the whole run, and X25519 only, so that an input carrying
// a real ClientHello costs one cheap key exchange instead of a post-quantum
// hybrid one (throughput).
var fzTLS = sync.OnceValues(func() (*tls.Config, error) {
	c, err := SelfSignedTLSConfig()
	if err != nil {
		return nil, err
	}
	c.CurvePreferences = []tls.CurveID{tls.X25519}
	return c, nil
})

func fzTLSConfig(tb testing.TB) *tls.Config {
	c, err := fzTLS()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

var fzDiscard = slog.New(slog.DiscardHandler)

// clientOutput splits what the proxy wrote to the client during admission:
// the one-byte answers to SSLRequest/GSSENCRequest, TLS records, and a final
// ErrorResponse (nil if none). Anything else fails.
func clientOutput(t *testing.T, out []byte) (answers []byte, tlsBytes int, errResp *pgproto3.ErrorResponse) {
	t.Helper()
	for i := 0; i < len(out); {
		switch b := out[i]; {
		case (b == 'S' || b == 'N') && tlsBytes == 0:
			answers = append(answers, b)
			i++
		case b >= 0x14 && b <= 0x17: // TLS record: alert, handshake, ...
			if len(out)-i < 5 {
				t.Fatalf("truncated TLS record in the output: %q", out[i:])
			}
			n := 5 + int(binary.BigEndian.Uint16(out[i+3:]))
			if len(out)-i < n {
				t.Fatalf("truncated TLS record in the output: %q", out[i:])
			}
			tlsBytes += n
			i += n
		case b == 'E' && tlsBytes == 0:
			return answers, tlsBytes, decodeFatal(t, out[i:])
		default:
			t.Fatalf("unexpected byte 0x%02x at %d in what the proxy sent the client: %q", b, i, out)
		}
	}
	return answers, tlsBytes, nil
}

// fzModes are the client_tls modes a fuzz input selects from.
// fzRelay is the fuzz Servers' relay pool: one for the whole run.
var fzRelay = func() func(testing.TB) *relay.Pool {
	var once sync.Once
	var p *relay.Pool
	return func(tb testing.TB) *relay.Pool {
		once.Do(func() {
			var err error
			if p, err = relay.NewPool(relay.Options{Engine: relay.Goroutine}); err != nil {
				tb.Fatal(err)
			}
		})
		return p
	}
}()

var fzModes = [...]ClientTLSMode{ClientTLSAllow, ClientTLSDisable, ClientTLSRequire}

// admissionSeeds are valid and near-valid first packets.
func admissionSeeds(tb testing.TB) map[string][]byte {
	startup := func(minor uint32, params ...string) []byte {
		b := []byte{0, 0, 0, 0}
		b = binary.BigEndian.AppendUint32(b, 3<<16|minor)
		for _, p := range params {
			b = append(b, p...)
			b = append(b, 0)
		}
		b = append(b, 0)
		binary.BigEndian.PutUint32(b, uint32(len(b)))
		return b
	}
	code := func(c uint32) []byte {
		return binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, c)
	}
	enc := func(m pgproto3.FrontendMessage) []byte {
		b, err := m.Encode(nil)
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	sm := enc(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "alice", "database": "app", "application_name": "psql"}})
	// A whole ClientHello would make each execution that keeps it intact
	// run a real key exchange and signature (about 0.5 ms) in crypto/tls,
	// whose handshake cannot complete on a scripted connection anyway: the
	// seeds carry its first 64 bytes, which take admission down the same
	// paths (0x16 after 'S', direct TLS) at a fraction of the cost.
	hello := clientHello(tb, nil)[:64]
	return map[string][]byte{
		"startup":                    sm,
		"startup_3_2":                startup(2, "user", "bob", "database", "db", "options", "-c search_path=x"),
		"startup_3_9":                startup(9, "user", "carol"),
		"startup_no_params":          startup(0),
		"startup_odd_params":         startup(0, "user"),
		"startup_unterminated":       startup(0, "user", "x")[:len(startup(0, "user", "x"))-1],
		"sslrequest_startup":         cat(code(codeSSLRequest), sm),
		"sslrequest_clienthello":     cat(code(codeSSLRequest), hello),
		"direct_tls_clienthello":     clientHello(tb, []string{alpnPostgres})[:64],
		"gssenc_startup":             cat(code(codeGSSENCRequest), sm),
		"gssenc_sslrequest_startup":  cat(code(codeGSSENCRequest), code(codeSSLRequest), sm),
		"sslrequest_twice":           cat(code(codeSSLRequest), code(codeSSLRequest)),
		"cancel":                     enc(&pgproto3.CancelRequest{ProcessID: 4242, SecretKey: []byte{1, 2, 3, 4}}),
		"cancel_long_key":            enc(&pgproto3.CancelRequest{ProcessID: 4242, SecretKey: bytes.Repeat([]byte{7}, 32)}),
		"cancel_short":               code(codeCancelRequest),
		"protocol_2":                 code(2 << 16),
		"protocol_1234_5679":         code(1234<<16 | 5679),
		"oversized":                  binary.BigEndian.AppendUint32([]byte{0, 0, 0x27, 0x11}, 3<<16),
		"too_short":                  []byte{0, 0, 0, 7, 0, 3, 0, 0},
		"truncated":                  sm[:len(sm)/2],
		"http":                       []byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
		"empty":                      nil,
		"startup_then_query":         cat(sm, enc(&pgproto3.Query{String: "select 1"})),
		"sslrequest_plaintext_after": cat(code(codeSSLRequest), []byte("Q\x00\x00\x00\x0dselect 1\x00")),
	}
}

// clientHello returns the first flight of a TLS client.
func clientHello(tb testing.TB, alpn []string) []byte {
	c := newFzConn(nil)
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: alpn})
	_ = tc.Handshake() // fails at EOF, after writing the ClientHello
	if c.out.Len() == 0 {
		tb.Fatal("no ClientHello written")
	}
	return c.out.Bytes()
}

// FuzzAdmission feeds arbitrary client bytes, under each client_tls mode,
// to the admission of a client (session.admit, then the startup parameter
// check of Server.handle) and to the whole Server.handle with a recording
// upstream dialer. It checks that:
//   - nothing panics and every execution ends (in-memory connections that
//     end in EOF; a watchdog catches endless loops);
//   - admit returns a packet or an error, never both or neither; a packet
//     is a CancelRequest that decodes or a protocol 3 StartupMessage, read
//     exactly (length word = size, nothing read past it: no bufio in front
//     of TLS), and never a plaintext StartupMessage under client_tls=require;
//   - every refusal is an error of a known kind, and a *clientError carries
//     a SQLSTATE and is sent as one FATAL ErrorResponse, the last thing the
//     client receives;
//   - the upstream is dialled only for a packet admission accepted (a
//     CancelRequest, or a StartupMessage whose parameters decode), exactly
//     once, and receives exactly that packet; a rejected packet never
//     reaches the dialling step;
//   - the client sees only 'S'/'N' answers, TLS records and that final
//     ErrorResponse.
func FuzzAdmission(f *testing.F) {
	seeds := map[string][]any{}
	for name, b := range admissionSeeds(f) {
		for i, m := range fzModes {
			seeds[name+"_"+string(m)] = []any{byte(i), b}
			f.Add(byte(i), b)
		}
	}
	writeSeeds(f, seeds)
	f.Fuzz(func(t *testing.T, mode byte, data []byte) {
		cfg := fzTLSConfig(t)
		m := fzModes[int(mode)%len(fzModes)]

		// 1. admit itself, plus the parameter check handle makes next.
		var (
			pkt       *startupPacket
			admitErr  error
			paramsErr error
			tlsOn     bool
			c         = newFzConn(data)
		)
		fzRun(t, "session.admit", func() {
			ss := &session{route: &Route{Name: "fuzz", ClientTLS: m, TLSConfig: cfg}, client: c, log: fzDiscard}
			pkt, admitErr = ss.admit()
			tlsOn = ss.tls
			if pkt != nil && pkt.code != codeCancelRequest {
				_, paramsErr = startupParams(pkt)
			}
		})
		if (pkt == nil) == (admitErr == nil) {
			t.Fatalf("admit returned packet %v and error %v", pkt, admitErr)
		}
		if pkt != nil {
			if len(pkt.raw) < 8 || len(pkt.raw) > maxStartupPacket || int(binary.BigEndian.Uint32(pkt.raw)) != len(pkt.raw) ||
				binary.BigEndian.Uint32(pkt.raw[4:]) != pkt.code {
				t.Fatalf("admitted a packet whose framing is wrong: % x", pkt.raw[:min(len(pkt.raw), 16)])
			}
			switch {
			case pkt.code == codeCancelRequest:
				if _, err := cancelKey(pkt); err != nil {
					t.Fatalf("admitted a CancelRequest that does not decode: %v", err)
				}
			case pkt.isStartupMessage():
				if m == ClientTLSRequire && !tlsOn {
					t.Fatalf("client_tls=require admitted a plaintext StartupMessage")
				}
			default:
				t.Fatalf("admitted a packet of code %d", pkt.code)
			}
			if !tlsOn {
				n := c.consumed()
				if n < len(pkt.raw) || !bytes.Equal(data[n-len(pkt.raw):n], pkt.raw) {
					t.Fatalf("admitted packet is not the last %d bytes read (%d read)", len(pkt.raw), n)
				}
			}
		}
		var admitCE *clientError
		if admitErr != nil {
			var q errQuiet
			switch {
			case errors.As(admitErr, &admitCE):
				checkClientError(t, admitCE)
			case errors.As(admitErr, &q):
			case errors.Is(admitErr, io.EOF), errors.Is(admitErr, io.ErrUnexpectedEOF):
			default:
				t.Fatalf("admission failed with an error of no known kind (%T): %v", admitErr, admitErr)
			}
		}

		// 2. The whole session, with a dialer that records what the
		// upstream receives (and then ends: EOF).
		var ups []*fzConn
		r := &Route{Name: "fuzz", UpstreamAddr: "upstream.test:5432", ClientTLS: m, TLSConfig: cfg,
			StartupTimeout: time.Minute,
			Dial: func(context.Context) (net.Conn, error) {
				u := newFzConn(nil)
				ups = append(ups, u)
				return u, nil
			}}
		s := &Server{log: fzDiscard, obs: nopObserver{}, relay: fzRelay(t)}
		hc := newFzConn(data)
		fzRun(t, "Server.handle", func() { s.handle(context.Background(), r, new(routeState), hc, testSlot()) })

		_, _, errResp := clientOutput(t, hc.out.Bytes())
		accepted := pkt != nil && paramsErr == nil
		switch {
		case !accepted && len(ups) > 0:
			t.Fatalf("upstream dialled for a rejected first packet (admit: %v; parameters: %v)", admitErr, paramsErr)
		case accepted && len(ups) != 1:
			t.Fatalf("accepted packet: %d upstream dials, want 1", len(ups))
		case accepted && !bytes.Equal(ups[0].out.Bytes(), pkt.raw):
			t.Fatalf("upstream received % x, want the admitted packet % x", ups[0].out.Bytes(), pkt.raw)
		}
		switch {
		case admitCE != nil:
			if errResp == nil || errResp.Code != admitCE.Code() {
				t.Fatalf("refusal %q (%s) did not reach the client as a FATAL ErrorResponse (got %v)", admitCE.Code(), admitCE.Message, errResp)
			}
		case pkt != nil && paramsErr != nil:
			if errResp == nil || errResp.Code != codeProtocolViolation {
				t.Fatalf("malformed StartupMessage (%v) not refused with 08P01 (got %v)", paramsErr, errResp)
			}
		case pkt != nil && pkt.code == codeCancelRequest:
			if errResp != nil {
				t.Fatalf("CancelRequest answered with an ErrorResponse: %s", errResp.Message)
			}
		case pkt != nil:
			// The scripted upstream closes at once: the client is told.
			if errResp == nil || errResp.Code != codeConnectionFailure {
				t.Fatalf("upstream that closed during authentication not reported with 08006 (got %v)", errResp)
			}
		default: // EOF or a failure that cannot be reported in protocol
			if errResp != nil {
				t.Fatalf("ErrorResponse %s after a refusal admit did not report (%v)", errResp.Message, admitErr)
			}
		}
	})
}
