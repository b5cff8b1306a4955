package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// scramUpstream offers SCRAM with and without -PLUS and records what the
// client sent in its SASLInitialResponse (nil if nothing arrived).
func scramUpstream(t *testing.T, got chan<- []byte) *fakeUpstream {
	return &fakeUpstream{t: t, done: make(chan struct{}), script: func(be *pgproto3.Backend, conn net.Conn) {
		if _, err := be.ReceiveStartupMessage(); err != nil {
			t.Errorf("upstream: %v", err)
			return
		}
		be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}})
		_ = be.Flush()
		be.SetAuthType(pgproto3.AuthTypeSASL)
		msg, err := be.Receive()
		if err != nil {
			got <- nil
			return
		}
		init, _ := msg.(*pgproto3.SASLInitialResponse)
		if init == nil {
			got <- nil
			return
		}
		got <- append([]byte(init.AuthMechanism+" "), init.Data...)
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed for user \"alice\""})
		_ = be.Flush()
	}}
}

func TestAuthRemovesChannelBinding(t *testing.T) {
	tests := []struct {
		name     string
		useTLS   bool
		gs2      string
		wantCode string // "" means forwarded to the server
	}{
		{"plaintext client n flag is forwarded", false, "n,,n=,r=abc", ""},
		{"TLS client n flag is forwarded", true, "n,,n=,r=abc", ""},
		{"TLS client y flag gets the hint", true, "y,,n=,r=abc", "0A000"},
		{"plaintext client p flag gets the hint", false, "p=tls-server-end-point,,n=,r=abc", "0A000"},
		{"plaintext client y flag gets the hint (node-postgres with enableChannelBinding)", false, "y,,n=,r=abc", "0A000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan []byte, 1)
			up := scramUpstream(t, got)
			addr := startProxy(t, ClientTLSAllow, up.dial)
			var c net.Conn = dialProxy(t, addr)
			if tc.useTLS {
				c.Write(sslRequest())
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
					t.Fatalf("answer %q %v", b, err)
				}
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // like sslmode=require
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				c = tc
			}
			c.Write(startupBytes(t, map[string]string{"user": "alice"}))
			fe := pgproto3.NewFrontend(c, c)
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			sasl, ok := msg.(*pgproto3.AuthenticationSASL)
			if !ok {
				t.Fatalf("got %T", msg)
			}
			if len(sasl.AuthMechanisms) != 1 || sasl.AuthMechanisms[0] != "SCRAM-SHA-256" {
				t.Fatalf("client saw mechanisms %q, want only SCRAM-SHA-256", sasl.AuthMechanisms)
			}
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(tc.gs2)})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			if tc.wantCode != "" {
				er := expectFatal(t, fe, tc.wantCode, "channel binding cannot pass through")
				// The fixes: channel binding off in the client, or (on a
				// TLS leg) plaintext on the local hop.
				fixes := []string{"channel_binding=disable", "enableChannelBinding off"}
				if tc.useTLS {
					fixes = append(fixes, "sslmode=disable")
				}
				for _, f := range fixes {
					if !strings.Contains(er.Hint, f) {
						t.Errorf("hint %q does not name %q", er.Hint, f)
					}
				}
				if !tc.useTLS && strings.Contains(er.Hint, "sslmode=disable") {
					t.Errorf("hint %q suggests sslmode=disable to a client already in plaintext", er.Hint)
				}
				if g := <-got; g != nil {
					t.Errorf("server received %q, want nothing", g)
				}
				return
			}
			if g := <-got; string(g) != "SCRAM-SHA-256 "+tc.gs2 {
				t.Fatalf("server received %q", g)
			}
			// The server's own error reaches the client verbatim.
			expectFatal(t, fe, "28P01", "password authentication failed")
		})
	}
}

// TestAuthRequestAuthenticationOkLength: AuthenticationOk is forwarded
// only as the exact 8-byte message; a longer one is a protocol violation
// and nothing reaches the client.
func TestAuthRequestAuthenticationOkLength(t *testing.T) {
	tests := []struct {
		name     string
		raw      []byte
		wantDone bool
		wantErr  string
	}{
		{"exact", []byte("R\x00\x00\x00\x08\x00\x00\x00\x00"), true, ""},
		{"trailing bytes", []byte("R\x00\x00\x00\x0c\x00\x00\x00\x00ZZZZ"), false, "AuthenticationOk of 12 bytes instead of 8"},
		{"truncated", []byte("R\x00\x00\x00\x06\x00\x00"), false, "truncated authentication request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var client bytes.Buffer
			a := &authExchange{client: &client, upstream: &bytes.Buffer{}, mode: AuthPassthrough}
			done, err := a.authRequest(&message{typ: 'R', raw: tc.raw})
			if done != tc.wantDone {
				t.Errorf("done = %v, want %v", done, tc.wantDone)
			}
			if tc.wantErr == "" {
				if err != nil || !bytes.Equal(client.Bytes(), tc.raw) {
					t.Fatalf("err %v, client got %q; want the message forwarded", err, client.Bytes())
				}
				return
			}
			var ce *clientError
			if !errors.As(err, &ce) || ce.Code() != codeProtocolViolation || !strings.Contains(ce.Message, tc.wantErr) {
				t.Fatalf("err = %v, want a 08P01 ClientError containing %q", err, tc.wantErr)
			}
			if client.Len() != 0 {
				t.Errorf("the client got %q", client.Bytes())
			}
		})
	}
}

func TestChannelBindingHintNamesTheRouteFixFirst(t *testing.T) {
	tests := []struct {
		name  string
		ax    authExchange
		first string
	}{
		{"passthrough", authExchange{mode: AuthPassthrough, clientTLS: true}, "Set auth: auto (the default)"},
		{"auto where it may not ask", authExchange{mode: AuthAuto, clientTLS: true, whyNoAsk: func() string { return "why" }}, "Give this route a certificate of its own (client_tls_cert and client_tls_key)"},
		{"auto, plaintext client", authExchange{mode: AuthAuto}, "Set auth: relay for this route"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ce := tc.ax.channelBindingError("the client asked for SCRAM channel binding (GS2 flag y)")
			if !strings.HasPrefix(ce.Hint, tc.first) || !strings.Contains(ce.Hint, "channel_binding=disable") || ce.Reason != chain.ReasonChannelBinding {
				t.Fatalf("hint %q, reason %q; want it to start with %q", ce.Hint, ce.Reason, tc.first)
			}
		})
	}
}
