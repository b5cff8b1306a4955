package testpki

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// ScriptedOptions configure a ScriptedServer.
type ScriptedOptions struct {
	// Cert is the server's certificate chain and key. Required.
	Cert tls.Certificate
	// Direct makes the server expect PostgreSQL 17's direct TLS: the TLS
	// handshake starts at once, with no SSLRequest.
	Direct bool
	// ALPN are the server's ALPN protocols; nil selects none.
	ALPN []string
	// KeyLength is the length of the cancel key in BackendKeyData (4 in
	// protocol 3.0, up to 256 in 3.2). Zero means 4.
	KeyLength int
	// ClientCAs, when set, makes the server require and verify a client
	// certificate.
	ClientCAs []*Cert
	// SCRAMPassword, when set, makes the server ask for SCRAM-SHA-256
	// (offering -PLUS too, with tls-server-end-point binding checked against
	// its own certificate) and accept only this password.
	SCRAMPassword string
	// SCRAMNoPlus makes the SCRAM server offer SCRAM-SHA-256 alone.
	SCRAMNoPlus bool
	// SCRAMIterations is the iteration count the server asks for; zero
	// means PostgreSQL's default, 4096.
	SCRAMIterations int
	// Standby makes the server a hot standby: with RoleParams it reports
	// in_hot_standby on (and default_transaction_read_only on) at the end
	// of the login as PostgreSQL 14+ does; without, it reports neither (as
	// PostgreSQL 13) and answers a query holding pg_is_in_recovery with
	// its recovery state and transaction_read_only.
	Standby bool
	// RoleParams reports in_hot_standby and default_transaction_read_only.
	RoleParams bool
	// SCRAMSignature tampers with the server's proof of the password:
	// "forge" sends a wrong signature in AuthenticationSASLFinal, "omit"
	// sends AuthenticationOk without AuthenticationSASLFinal ("" is the
	// honest server).
	SCRAMSignature string
	// Password, when set (and SCRAMPassword is not), makes the server ask
	// for it with PasswordAuth: "md5" (salted with the user name, as
	// PostgreSQL stores md5 secrets) or "password" (cleartext).
	Password     string
	PasswordAuth string
}

// ScriptedSCRAM is what a SCRAM exchange with the scripted server showed.
type ScriptedSCRAM struct {
	// Mechanism the client chose.
	Mechanism string
	// GS2Header is the client-first-message's GS2 header, e.g.
	// "p=tls-server-end-point,,".
	GS2Header string
	// BindingData is the decoded c= of the client-final-message: the GS2
	// header followed by the channel binding data.
	BindingData []byte
	// BindingOK tells whether the binding data was the SHA-256 of the
	// server certificate (tls-server-end-point) when -PLUS was chosen.
	BindingOK bool
	// ProofOK tells whether the client's proof matched the password.
	ProofOK bool
}

// ScriptedServer is a minimal PostgreSQL server built with pgproto3, for
// what the PG15 cluster cannot show: direct TLS with ALPN, and cancel keys
// longer than 4 bytes. It accepts any user without a password, answers a
// simple Query with one row holding the query text, blocks on the query
// "wait" until a matching CancelRequest arrives, and records what it saw.
type ScriptedServer struct {
	// Addr is "127.0.0.1:PORT"; Port the port alone.
	Addr string
	Port int

	opts ScriptedOptions
	l    net.Listener
	wg   sync.WaitGroup

	mu          sync.Mutex
	startups    []map[string]string
	cancels     []ScriptedCancel
	alpn        []string
	peers       []string // client certificate subjects
	waiting     map[string]chan struct{}
	pid         uint32
	scram       []ScriptedSCRAM
	roleQueries int
	logins      int
}

// Logins returns how many sessions have logged in (AuthenticationOk sent).
func (s *ScriptedServer) Logins() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logins
}

// RoleQueries returns how many role queries (pg_is_in_recovery) the
// server answered.
func (s *ScriptedServer) RoleQueries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.roleQueries
}

// SCRAMExchanges returns the SCRAM exchanges seen.
func (s *ScriptedServer) SCRAMExchanges() []ScriptedSCRAM {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ScriptedSCRAM(nil), s.scram...)
}

// ScriptedCancel is a CancelRequest as the server received it.
type ScriptedCancel struct {
	ProcessID uint32
	SecretKey []byte
	// TLS tells whether it arrived inside TLS.
	TLS bool
	// Matched tells whether it named a running session's key.
	Matched bool
}

// StartScriptedServer listens on a free loopback port.
func StartScriptedServer(o ScriptedOptions) (*ScriptedServer, error) {
	if o.KeyLength == 0 {
		o.KeyLength = 4
	}
	if o.KeyLength < 4 || o.KeyLength > 256 {
		return nil, errors.New("testpki: scripted server: key length must be 4 to 256")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &ScriptedServer{Addr: l.Addr().String(), Port: l.Addr().(*net.TCPAddr).Port, opts: o, l: l,
		waiting: map[string]chan struct{}{}, pid: 4000}
	go s.accept()
	return s, nil
}

// Close stops the server and waits for its connections.
func (s *ScriptedServer) Close() {
	s.l.Close()
	s.wg.Wait()
}

// Startups returns the parameters of every StartupMessage received.
func (s *ScriptedServer) Startups() []map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]string(nil), s.startups...)
}

// Cancels returns the CancelRequests received.
func (s *ScriptedServer) Cancels() []ScriptedCancel {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ScriptedCancel(nil), s.cancels...)
}

// NegotiatedALPN returns the ALPN protocol of each TLS connection.
func (s *ScriptedServer) NegotiatedALPN() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.alpn...)
}

// ClientCertSubjects returns the subject of the client certificate of each
// TLS connection that presented one.
func (s *ScriptedServer) ClientCertSubjects() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.peers...)
}

func (s *ScriptedServer) accept() {
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			s.serve(c)
		}()
	}
}

func (s *ScriptedServer) tlsConfig() *tls.Config {
	cfg := &tls.Config{Certificates: []tls.Certificate{s.opts.Cert}, NextProtos: s.opts.ALPN, MinVersion: tls.VersionTLS12}
	if len(s.opts.ClientCAs) > 0 {
		cfg.ClientCAs = Pool(s.opts.ClientCAs...)
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg
}

func (s *ScriptedServer) serve(c net.Conn) {
	var conn net.Conn = c
	if !s.opts.Direct {
		var req [8]byte
		if _, err := io.ReadFull(c, req[:]); err != nil {
			return
		}
		if binary.BigEndian.Uint32(req[4:]) != 80877103 {
			return // not an SSLRequest: this server only speaks TLS
		}
		if _, err := c.Write([]byte{'S'}); err != nil {
			return
		}
	}
	tc := tls.Server(conn, s.tlsConfig())
	if err := tc.Handshake(); err != nil {
		return
	}
	cs := tc.ConnectionState()
	s.mu.Lock()
	s.alpn = append(s.alpn, cs.NegotiatedProtocol)
	if len(cs.PeerCertificates) > 0 {
		s.peers = append(s.peers, cs.PeerCertificates[0].Subject.String())
	}
	s.mu.Unlock()

	be := pgproto3.NewBackend(tc, tc)
	first, err := be.ReceiveStartupMessage()
	if err != nil {
		return
	}
	switch m := first.(type) {
	case *pgproto3.CancelRequest:
		s.cancel(m)
		return
	case *pgproto3.StartupMessage:
		switch {
		case s.opts.SCRAMPassword != "":
			if !s.scramAuth(be) {
				return
			}
		case s.opts.Password != "":
			if !s.passwordAuth(be, m.Parameters["user"]) {
				return
			}
		default:
			be.Send(&pgproto3.AuthenticationOk{})
		}
		s.session(be, m)
	}
}

func (s *ScriptedServer) cancel(m *pgproto3.CancelRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := string(binary.BigEndian.AppendUint32(nil, m.ProcessID)) + string(m.SecretKey)
	ch, ok := s.waiting[key]
	if ok {
		close(ch)
		delete(s.waiting, key)
	}
	s.cancels = append(s.cancels, ScriptedCancel{ProcessID: m.ProcessID, SecretKey: bytes.Clone(m.SecretKey), TLS: true, Matched: ok})
}

func (s *ScriptedServer) session(be *pgproto3.Backend, m *pgproto3.StartupMessage) {
	s.mu.Lock()
	s.logins++
	s.startups = append(s.startups, m.Parameters)
	s.pid++
	pid := s.pid
	s.mu.Unlock()
	secret := make([]byte, s.opts.KeyLength)
	_, _ = rand.Read(secret)
	key := string(binary.BigEndian.AppendUint32(nil, pid)) + string(secret)

	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "17.0 (pgverifyproxy scripted server)"})
	be.Send(&pgproto3.ParameterStatus{Name: "client_encoding", Value: "UTF8"})
	be.Send(&pgproto3.ParameterStatus{Name: "standard_conforming_strings", Value: "on"})
	onOff := map[bool]string{true: "on", false: "off"}
	if s.opts.RoleParams {
		be.Send(&pgproto3.ParameterStatus{Name: "in_hot_standby", Value: onOff[s.opts.Standby]})
		be.Send(&pgproto3.ParameterStatus{Name: "default_transaction_read_only", Value: onOff[s.opts.Standby]})
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: pid, SecretKey: secret})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch q := msg.(type) {
		case *pgproto3.Terminate:
			return
		case *pgproto3.Query:
			if q.String == "wait" {
				ch := make(chan struct{})
				s.mu.Lock()
				s.waiting[key] = ch
				s.mu.Unlock()
				select {
				case <-ch:
					be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "57014",
						Message: "canceling statement due to user request"})
				case <-time.After(20 * time.Second):
					be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "XX000",
						Message: "scripted server: no cancel request arrived"})
				}
			} else if strings.Contains(q.String, "pg_is_in_recovery") {
				s.mu.Lock()
				s.roleQueries++
				s.mu.Unlock()
				be.Send(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
					{Name: []byte("pg_is_in_recovery"), DataTypeOID: 16, DataTypeSize: 1, TypeModifier: -1},
					{Name: []byte("transaction_read_only"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}})
				be.Send(&pgproto3.DataRow{Values: [][]byte{[]byte(map[bool]string{true: "t", false: "f"}[s.opts.Standby]), []byte(onOff[s.opts.Standby])}})
				be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
			} else {
				be.Send(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("echo"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}})
				be.Send(&pgproto3.DataRow{Values: [][]byte{[]byte(q.String)}})
				be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
			}
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if be.Flush() != nil {
				return
			}
		default:
			be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "0A000",
				Message: "scripted server: only simple queries are supported"})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if be.Flush() != nil {
				return
			}
		}
	}
}
