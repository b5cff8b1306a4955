package testpki

// A TLS 1.3 peer that floods KeyUpdates: crypto/tls has no API to send
// one, so the records are made here, with the traffic secret and sequence
// number of a crypto/tls connection (TakeOver), and written on the socket
// under it once the test stops writing through it.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net"
	"reflect"
)

// TakeOver returns a RecordWriter that goes on where c's own writes
// stopped: the traffic secret and the sequence number of c's next record,
// read from crypto/tls's unexported state by reflection (there is no API
// for either), and c's cipher suite. raw is the socket under c. From then
// on nothing may write through c. It fails, saying so, when crypto/tls's
// fields are no longer where this reads them.
func TakeOver(c *tls.Conn, raw net.Conn) (*RecordWriter, error) {
	cs := c.ConnectionState()
	if cs.Version != tls.VersionTLS13 {
		return nil, fmt.Errorf("testpki: TLS version %x, not 1.3: no KeyUpdate", cs.Version)
	}
	out := reflect.ValueOf(c).Elem().FieldByName("out")
	seqV, secV := out.FieldByName("seq"), out.FieldByName("trafficSecret")
	if !seqV.IsValid() || seqV.Kind() != reflect.Array || seqV.Len() != 8 || !secV.IsValid() || secV.Kind() != reflect.Slice {
		return nil, errors.New("testpki: crypto/tls's Conn.out.seq or Conn.out.trafficSecret moved: update TakeOver for this Go version")
	}
	var seq uint64
	for i := range 8 {
		seq = seq<<8 | seqV.Index(i).Uint()
	}
	secret := make([]byte, secV.Len())
	for i := range secret {
		secret[i] = byte(secV.Index(i).Uint())
	}
	return NewRecordWriter(raw, cs.CipherSuite, secret, seq)
}

// RecordWriter writes TLS 1.3 records of one direction of a connection,
// with AES-GCM (TLS_AES_128_GCM_SHA256 or TLS_AES_256_GCM_SHA384).
type RecordWriter struct {
	w      net.Conn
	hash   func() hash.Hash
	keyLen int
	secret []byte
	aead   cipher.AEAD
	iv     []byte
	seq    uint64
	rec    []byte
}

// NewRecordWriter returns a writer of records to w under the traffic
// secret, starting at sequence number seq, for the TLS 1.3 cipher suite
// suite (tls.ConnectionState.CipherSuite).
func NewRecordWriter(w net.Conn, suite uint16, secret []byte, seq uint64) (*RecordWriter, error) {
	rw := &RecordWriter{w: w, seq: seq}
	switch suite {
	case tls.TLS_AES_128_GCM_SHA256:
		rw.hash, rw.keyLen = sha256.New, 16
	case tls.TLS_AES_256_GCM_SHA384:
		rw.hash, rw.keyLen = sha512.New384, 32
	default:
		return nil, fmt.Errorf("testpki: TLS 1.3 cipher suite %s is not supported by the record writer (AES-GCM only)", tls.CipherSuiteName(suite))
	}
	if err := rw.setSecret(secret); err != nil {
		return nil, err
	}
	return rw, nil
}

// expandLabel is TLS 1.3's HKDF-Expand-Label with an empty context.
func (rw *RecordWriter) expandLabel(secret []byte, label string, n int) ([]byte, error) {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full))
	info = binary.BigEndian.AppendUint16(info, uint16(n))
	info = append(info, byte(len(full)))
	info = append(info, full...)
	info = append(info, 0)
	return hkdf.Expand(rw.hash, secret, string(info), n)
}

func (rw *RecordWriter) setSecret(secret []byte) error {
	key, err := rw.expandLabel(secret, "key", rw.keyLen)
	if err != nil {
		return err
	}
	iv, err := rw.expandLabel(secret, "iv", 12)
	if err != nil {
		return err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return err
	}
	rw.secret, rw.aead, rw.iv = secret, aead, iv
	return nil
}

// seal appends one record of content type typ with body to rw.rec.
func (rw *RecordWriter) seal(typ byte, body []byte) {
	inner := append(append([]byte{}, body...), typ)
	n := len(inner) + rw.aead.Overhead()
	hdr := []byte{23, 3, 3, byte(n >> 8), byte(n)}
	nonce := append([]byte{}, rw.iv...)
	for i := range 8 {
		nonce[4+i] ^= byte(rw.seq >> (56 - 8*i))
	}
	rw.rec = append(rw.rec, hdr...)
	rw.rec = rw.aead.Seal(rw.rec, nonce, inner, hdr)
	rw.seq++
}

// KeyUpdate adds a KeyUpdate message (update_requested: the peer must
// answer with its own) and switches to the next traffic secret.
func (rw *RecordWriter) KeyUpdate(requested bool) error {
	msg := []byte{24, 0, 0, 1, 0}
	if requested {
		msg[4] = 1
	}
	rw.seal(22, msg)
	next, err := rw.expandLabel(rw.secret, "traffic upd", rw.hash().Size())
	if err != nil {
		return err
	}
	rw.seq = 0
	return rw.setSecret(next)
}

// Data adds an application-data record.
func (rw *RecordWriter) Data(b []byte) { rw.seal(23, b) }

// Take returns the records added so far and forgets them (for a caller
// that writes them itself).
func (rw *RecordWriter) Take() []byte {
	b := append([]byte(nil), rw.rec...)
	rw.rec = rw.rec[:0]
	return b
}

// Flush writes the records added so far.
func (rw *RecordWriter) Flush() error {
	_, err := rw.w.Write(rw.rec)
	rw.rec = rw.rec[:0]
	return err
}

// KeyUpdateBatch adds n KeyUpdates with update_requested, with one
// application-data record of next() after every 15 of them (crypto/tls
// refuses more than 16 records in a row that carry no application data).
// It returns the bytes added.
func (rw *RecordWriter) KeyUpdateBatch(n int, next func() []byte) (int, error) {
	before := len(rw.rec)
	for i := 1; i <= n; i++ {
		if err := rw.KeyUpdate(true); err != nil {
			return 0, err
		}
		if i%15 == 0 {
			rw.Data(next())
		}
	}
	return len(rw.rec) - before, nil
}
