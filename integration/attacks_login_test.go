//go:build linux

package integration

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// The login rows of the attack table (issue 24), each against the binary:
// a storm of unauthenticated connections on a password_command route,
// channel_binding require in auth auto against a server that lets a login
// in unbound, a client outside ask_password_from, and a web page reaching
// the admin endpoint by DNS rebinding.

// TestLoginAttackPasswordCommandStorm: 30 bare connections (a
// StartupMessage and nothing else) at once on a relay route with a
// password_command and password_command_ttl 0 start at most one run at a
// time, and three genuine logins among them are served.
func TestLoginAttackPasswordCommandStorm(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "token.sh")
	body := fmt.Sprintf(`#!/bin/sh
mkdir %[1]s/lock 2>/dev/null || echo overlap >> %[1]s/overlap
echo run >> %[1]s/runs
sleep 0.5
rmdir %[1]s/lock
echo '%[2]s'
`, dir, harness.ScramPassword)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	p := startCLI(t, nil, "--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--ca-file", rootFile,
		"--auth", "relay", "--password-command", script, "--password-command-ttl", "0", "--client-tls", "disable")
	addr := fmt.Sprintf("127.0.0.1:%d", p.port)

	var wg sync.WaitGroup
	var mu sync.Mutex
	var bare []net.Conn
	for i := 0; i < 30; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			bare = append(bare, c)
			mu.Unlock()
			m, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
				Parameters: map[string]string{"user": harness.ScramUser, "database": "postgres"}}).Encode(nil)
			_, _ = c.Write(m)
		}()
	}
	results := make([]psqlResult, 3)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = runPsql(t, p.port, "user="+harness.ScramUser+" sslmode=disable", "", "select current_user")
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range bare {
			c.Close()
		}
	}()
	for i, r := range results {
		if r.code != 0 || r.out != harness.ScramUser {
			t.Errorf("genuine login %d during the storm: exit %d out %q err %q", i, r.code, r.out, r.err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "overlap")); len(b) > 0 {
		t.Errorf("password_command runs overlapped %d times during a storm of 33 connections", strings.Count(string(b), "\n"))
	}
	runs, _ := os.ReadFile(filepath.Join(dir, "runs"))
	t.Logf("33 connections at once started %d password_command run(s)", strings.Count(string(runs), "\n"))
	if t.Failed() {
		t.Logf("proxy log:\n%s", p.log())
	}
}

// TestLoginAttackChannelBindingRequireInAuto: with channel_binding
// require, auth auto refuses what relay refuses: a server (with a valid
// certificate) that lets a stored-password login in without any
// authentication, and an md5 request, which auto used to pass on to the
// client.
func TestLoginAttackChannelBindingRequireInAuto(t *testing.T) {
	tests := []struct {
		name   string
		server testpki.ScriptedOptions
		stored bool
		ssl    string
	}{
		{name: "AuthenticationOk at once, stored password", server: testpki.ScriptedOptions{}, stored: true, ssl: "disable"},
		{name: "md5 request to a TLS client", server: testpki.ScriptedOptions{Password: harness.MD5Password, PasswordAuth: "md5"}, ssl: "require"},
		{name: "cleartext request to a TLS client", server: testpki.ScriptedOptions{Password: harness.MD5Password, PasswordAuth: "password"}, ssl: "require"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.server
			opts.Cert = pki.Leaf.TLSCertificate(pki.Intermediate)
			s, err := testpki.StartScriptedServer(opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
			args := []string{"--upstream", s.Addr, "--server-name", "localhost", "--ca-file", rootFile, "--channel-binding", "require"}
			var env []string
			if tc.stored {
				args = append(args, "--password-env", "PGVP_TEST_PASSWORD")
				env = append(env, "PGVP_TEST_PASSWORD=stored-secret")
			}
			p := startCLI(t, env, args...)
			r := runPsql(t, p.port, "user=alice dbname=db sslmode="+tc.ssl, harness.MD5Password, "select 1")
			if r.code == 0 || !strings.Contains(r.err, "channel_binding: require") {
				t.Fatalf("psql through an auto route with channel_binding require: exit %d out %q err %q, want a refusal naming channel_binding: require\nproxy log:\n%s",
					r.code, r.out, r.err, p.log())
			}
		})
	}
}

// TestLoginAttackClientOutsideAskPasswordFrom: a TLS client from an
// address outside ask_password_from is never asked for its password with
// the generated certificate (its own SCRAM exchange is relayed, and the
// log says why); one inside is asked. The clients connect from 127.0.0.1
// and 127.0.0.2 (Linux routes all of 127/8 to loopback).
func TestLoginAttackClientOutsideAskPasswordFrom(t *testing.T) {
	p := startCLI(t, nil, "--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--ca-file", rootFile,
		"--ask-password-from", "127.0.0.2/32")
	first := func(from string) string {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var req [8]byte
		binary.BigEndian.PutUint32(req[0:], 8)
		binary.BigEndian.PutUint32(req[4:], 80877103)
		if _, err := c.Write(req[:]); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
			t.Fatalf("SSLRequest answer %q, %v", b, err)
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // sslmode=require
		fe := pgproto3.NewFrontend(tc, tc)
		fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
			Parameters: map[string]string{"user": harness.ScramUser, "database": "postgres"}})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		for {
			m, err := fe.Receive()
			if err != nil {
				t.Fatalf("from %s: %v\nproxy log:\n%s", from, err, p.log())
			}
			switch m := m.(type) {
			case *pgproto3.AuthenticationCleartextPassword:
				return "asked"
			case *pgproto3.AuthenticationSASL:
				return "sasl " + strings.Join(m.AuthMechanisms, " ")
			case *pgproto3.ErrorResponse:
				return "error " + m.Message
			}
		}
	}
	if got := first("127.0.0.2"); got != "asked" {
		t.Fatalf("a client inside ask_password_from (127.0.0.2): %q, want asked for its password", got)
	}
	if got := first("127.0.0.1"); got != "sasl SCRAM-SHA-256" {
		t.Fatalf("a client outside ask_password_from (127.0.0.1): %q, want its own SCRAM exchange relayed (without -PLUS), never asked", got)
	}
	waitForLog(t, p, "only from 127.0.0.2/32 (ask_password_from)")
}

// TestLoginAttackAdminDNSRebinding: a web page whose name now resolves to
// 127.0.0.1 sends its requests with its own name as Host: the admin
// endpoint answers 421 to each, /quitquitquit included, and the proxy
// keeps running; by address the endpoint answers.
func TestLoginAttackAdminDNSRebinding(t *testing.T) {
	adminPort, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := startCLI(t, nil, "--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--ca-file", rootFile,
		"--admin", fmt.Sprintf("127.0.0.1:%d", adminPort), "--admin-quit")
	base := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	do := func(method, path, host string, hdr map[string]string) int {
		req, err := http.NewRequest(method, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s Host %s: %v", method, path, host, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	evil := fmt.Sprintf("rebind.attacker.example:%d", adminPort)
	page := map[string]string{"Origin": "http://" + evil, "Sec-Fetch-Site": "same-origin"}
	for _, path := range []string{"/metrics", "/readyz", "/healthz"} {
		if code := do("GET", path, evil, page); code != http.StatusMisdirectedRequest {
			t.Errorf("GET %s with Host %s: %d, want 421", path, evil, code)
		}
	}
	if code := do("POST", "/quitquitquit", evil, page); code != http.StatusMisdirectedRequest {
		t.Errorf("POST /quitquitquit with Host %s: %d, want 421", evil, code)
	}
	time.Sleep(200 * time.Millisecond)
	if code := do("GET", "/healthz", fmt.Sprintf("127.0.0.1:%d", adminPort), nil); code != http.StatusOK {
		t.Errorf("GET /healthz by address: %d, want 200 (the proxy must still run)\n%s", code, p.log())
	}
	if code := do("GET", "/healthz", fmt.Sprintf("localhost:%d", adminPort), nil); code != http.StatusOK {
		t.Errorf("GET /healthz as localhost: %d, want 200", code)
	}
}
