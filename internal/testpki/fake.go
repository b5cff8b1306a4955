package testpki

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"
)

// FakeAnswer scripts a fake upstream's reply to an SSLRequest (already read
// from c). It returns the connection from which application bytes are then
// recorded, or nil when nothing more should be read.
type FakeAnswer func(c net.Conn, f *FakeUpstream) net.Conn

// FakeUpstream is a scripted server on 127.0.0.1 standing in for a bad or
// hostile upstream. It records every application byte it receives after its
// answer, so tests can prove that no startup message (no credential)
// reached it.
type FakeUpstream struct {
	// Addr is "127.0.0.1:PORT".
	Addr string
	// Port is the listening port.
	Port int

	l      net.Listener
	answer FakeAnswer
	wg     sync.WaitGroup
	mu     sync.Mutex
	got    []byte
	sni    []string
	conns  int
}

// StartFakeUpstream listens on a free loopback port and answers every
// connection with answer.
func StartFakeUpstream(answer FakeAnswer) (*FakeUpstream, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &FakeUpstream{Addr: l.Addr().String(), Port: l.Addr().(*net.TCPAddr).Port, l: l, answer: answer}
	go f.accept()
	return f, nil
}

func (f *FakeUpstream) accept() {
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer c.Close()
			f.mu.Lock()
			f.conns++
			f.mu.Unlock()
			_ = c.SetDeadline(time.Now().Add(15 * time.Second))
			req := make([]byte, 8)
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			app := f.answer(c, f)
			if app == nil {
				return
			}
			b, _ := io.ReadAll(app)
			f.mu.Lock()
			f.got = append(f.got, b...)
			f.mu.Unlock()
		}()
	}
}

// Close stops listening and waits for the connections to end.
func (f *FakeUpstream) Close() {
	f.l.Close()
	f.wg.Wait()
}

// Received returns the application bytes received so far on connections
// that have ended. Call Close first to wait for all of them.
func (f *FakeUpstream) Received() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]byte(nil), f.got...)
}

// Conns counts the connections accepted.
func (f *FakeUpstream) Conns() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns
}

// SNI returns the server names clients sent, one per TLS handshake.
func (f *FakeUpstream) SNI() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.sni...)
}

// AnswerTLS answers 'S' and serves cert; tweak may change the TLS config
// (e.g. cap the version).
func AnswerTLS(cert tls.Certificate, tweak func(*tls.Config)) FakeAnswer {
	return func(c net.Conn, f *FakeUpstream) net.Conn {
		if _, err := c.Write([]byte{'S'}); err != nil {
			return nil
		}
		cfg := &tls.Config{
			Certificates: []tls.Certificate{cert},
			GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
				f.mu.Lock()
				f.sni = append(f.sni, h.ServerName)
				f.mu.Unlock()
				return nil, nil
			},
		}
		if tweak != nil {
			tweak(cfg)
		}
		tc := tls.Server(c, cfg)
		if err := tc.Handshake(); err != nil {
			return nil
		}
		return tc
	}
}

// AnswerBytes writes b as the answer and then records what follows in
// plaintext (e.g. b = "N", or "S" followed by injected bytes).
func AnswerBytes(b []byte) FakeAnswer {
	return func(c net.Conn, _ *FakeUpstream) net.Conn {
		if _, err := c.Write(b); err != nil {
			return nil
		}
		return c
	}
}

// HasStartupMessage reports whether b holds a PostgreSQL StartupMessage (or
// any user name parameter): what must never reach an untrusted upstream. A
// TLS ClientHello, which the proxy does send before it verifies, does not.
func HasStartupMessage(b []byte) bool {
	if len(b) >= 8 && binary.BigEndian.Uint32(b[4:8])>>16 == 3 {
		return true
	}
	return bytes.Contains(b, []byte("user\x00"))
}
