package testpki

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// scramIterations is the iteration count the scripted server asks for.
const scramIterations = 4096

// scramAuth runs the server side of SCRAM-SHA-256(-PLUS) (RFC 5802, RFC
// 7677, PostgreSQL's profile), records what the client sent and ends with
// AuthenticationOk when the proof matches, or a 28P01 error.
func (s *ScriptedServer) scramAuth(be *pgproto3.Backend) bool {
	rec := ScriptedSCRAM{}
	// The exchange is recorded before the server's last message goes out,
	// so that a client that has read it finds the record.
	saved := false
	save := func() {
		if !saved {
			saved = true
			s.mu.Lock()
			s.scram = append(s.scram, rec)
			s.mu.Unlock()
		}
	}
	defer save()
	fail := func(msg string) bool {
		save()
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "28P01", Message: msg})
		_ = be.Flush()
		return false
	}
	mechs := []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}
	if s.opts.SCRAMNoPlus {
		mechs = mechs[1:]
	}
	be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: mechs})
	if be.Flush() != nil {
		return false
	}
	be.SetAuthType(pgproto3.AuthTypeSASL)
	msg, err := be.Receive()
	if err != nil {
		return false
	}
	init, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok {
		return fail("expected SASLInitialResponse")
	}
	rec.Mechanism = init.AuthMechanism
	// client-first-message = gs2-header client-first-message-bare
	first := string(init.Data)
	parts := strings.SplitN(first, ",", 3)
	if len(parts) != 3 {
		return fail("malformed client-first-message")
	}
	rec.GS2Header = parts[0] + "," + parts[1] + ","
	bare := parts[2]
	clientNonce := ""
	for _, a := range strings.Split(bare, ",") {
		if strings.HasPrefix(a, "r=") {
			clientNonce = a[2:]
		}
	}
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	nonce := make([]byte, 18)
	_, _ = rand.Read(nonce)
	combined := clientNonce + base64.StdEncoding.EncodeToString(nonce)
	iterations := scramIterations
	if s.opts.SCRAMIterations > 0 {
		iterations = s.opts.SCRAMIterations
	}
	serverFirst := fmt.Sprintf("r=%s,s=%s,i=%d", combined, base64.StdEncoding.EncodeToString(salt), iterations)
	be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)})
	if be.Flush() != nil {
		return false
	}
	be.SetAuthType(pgproto3.AuthTypeSASLContinue)
	msg, err = be.Receive()
	if err != nil {
		return false
	}
	resp, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return fail("expected SASLResponse")
	}
	final := string(resp.Data)
	i := strings.LastIndex(final, ",p=")
	if i < 0 {
		return fail("malformed client-final-message")
	}
	withoutProof, proofB64 := final[:i], final[i+3:]
	for _, a := range strings.Split(withoutProof, ",") {
		if strings.HasPrefix(a, "c=") {
			rec.BindingData, _ = base64.StdEncoding.DecodeString(a[2:])
		}
	}
	if rec.Mechanism == "SCRAM-SHA-256-PLUS" {
		// tls-server-end-point: the SHA-256 of the server's certificate.
		sum := sha256.Sum256(s.opts.Cert.Certificate[0])
		rec.BindingOK = bytes.Equal(rec.BindingData, append([]byte(rec.GS2Header), sum[:]...))
		if !rec.BindingOK {
			return fail("channel binding check failed")
		}
	}
	salted, err := pbkdf2.Key(sha256.New, s.opts.SCRAMPassword, salt, iterations, sha256.Size)
	if err != nil {
		return fail(err.Error())
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	authMessage := bare + "," + serverFirst + "," + withoutProof
	clientSig := hmacSHA256(storedKey[:], authMessage)
	proof, err := base64.StdEncoding.DecodeString(proofB64)
	if err != nil || len(proof) != len(clientSig) {
		return fail("malformed proof")
	}
	recovered := make([]byte, len(proof))
	for i := range proof {
		recovered[i] = proof[i] ^ clientSig[i]
	}
	if sum := sha256.Sum256(recovered); !hmac.Equal(sum[:], storedKey[:]) {
		return fail(`password authentication failed for user (scripted)`)
	}
	rec.ProofOK = true
	serverSig := hmacSHA256(hmacSHA256(salted, "Server Key"), authMessage)
	save()
	switch s.opts.SCRAMSignature {
	case "forge":
		serverSig[0] ^= 0xff
		fallthrough
	case "":
		be.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte("v=" + base64.StdEncoding.EncodeToString(serverSig))})
	}
	be.Send(&pgproto3.AuthenticationOk{})
	return be.Flush() == nil
}

// passwordAuth asks for the md5 or cleartext password and ends with
// AuthenticationOk when it matches, or a 28P01 error.
func (s *ScriptedServer) passwordAuth(be *pgproto3.Backend, user string) bool {
	var salt [4]byte
	_, _ = rand.Read(salt[:])
	want := s.opts.Password
	if s.opts.PasswordAuth == "md5" {
		be.Send(&pgproto3.AuthenticationMD5Password{Salt: salt})
		be.SetAuthType(pgproto3.AuthTypeMD5Password)
		inner := md5.Sum([]byte(s.opts.Password + user))
		outer := md5.Sum(append([]byte(hex.EncodeToString(inner[:])), salt[:]...))
		want = "md5" + hex.EncodeToString(outer[:])
	} else {
		be.Send(&pgproto3.AuthenticationCleartextPassword{})
		be.SetAuthType(pgproto3.AuthTypeCleartextPassword)
	}
	if be.Flush() != nil {
		return false
	}
	msg, err := be.Receive()
	if err != nil {
		return false
	}
	if pm, ok := msg.(*pgproto3.PasswordMessage); !ok || pm.Password != want {
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "28P01",
			Message: fmt.Sprintf("password authentication failed for user %q", user)})
		_ = be.Flush()
		return false
	}
	be.Send(&pgproto3.AuthenticationOk{})
	return true
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}
