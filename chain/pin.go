package chain

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// ErrNoPin means no pin file exists yet for an upstream.
var ErrNoPin = errors.New("no pin for this upstream yet")

// metaPrefix starts the one comment line of a pin file that carries its
// metadata as JSON. OpenSSL (and so libpq) skips text outside PEM blocks.
const metaPrefix = "# pgverifyproxy-meta: "

// maxPinFileBytes bounds what is read of a pin file (a few anchors and
// intermediates take a few KiB).
const maxPinFileBytes = 1 << 20

// pinFormatVersion is the version of the metadata layout.
const pinFormatVersion = 1

// Pin is what the proxy trusts for one upstream: its trust anchor(s), with
// the intermediates seen under them kept only as path-building hints.
type Pin struct {
	// Host, Port and ServerName identify the upstream.
	Host       string
	Port       int
	ServerName string
	// Policy says how the anchor was chosen: "system" (a public root that
	// the chain led to), "tofu" (trust on first use) or "ca-file".
	Policy string
	// Anchors are the trusted certificates; the PEM part of the file.
	Anchors []*x509.Certificate
	// Intermediates are hints for building paths, never anchors.
	Intermediates []*x509.Certificate
	// FirstSeen is when the anchor was first pinned; Updated the last write.
	FirstSeen, Updated time.Time
}

// pinMeta is the JSON on the metadata line.
type pinMeta struct {
	Version       int          `json:"version"`
	Host          string       `json:"host"`
	Port          int          `json:"port"`
	ServerName    string       `json:"server_name"`
	Policy        string       `json:"policy"`
	FirstSeen     time.Time    `json:"first_seen"`
	Updated       time.Time    `json:"updated"`
	Anchors       []anchorMeta `json:"anchors"`
	Intermediates []anchorMeta `json:"intermediates,omitempty"`
}

type anchorMeta struct {
	Subject    string    `json:"subject"`
	SPKISHA256 string    `json:"spki_sha256"`
	NotAfter   time.Time `json:"not_after"`
}

// VerifyName is the name checked against the certificate.
func (p *Pin) VerifyName() string {
	if p.ServerName != "" {
		return p.ServerName
	}
	return p.Host
}

// Pool returns the anchors as a CertPool.
func (p *Pin) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	for _, a := range p.Anchors {
		pool.AddCert(a)
	}
	return pool
}

// Fingerprints lists the anchors' SPKI SHA-256 pins.
func (p *Pin) Fingerprints() []string {
	var out []string
	for _, a := range p.Anchors {
		out = append(out, SPKIHash(a))
	}
	return out
}

// Encode renders the pin file: comment lines a person can read, one
// metadata line, and the anchors as PEM, which libpq accepts as sslrootcert.
func (p *Pin) Encode() ([]byte, error) {
	if len(p.Anchors) == 0 {
		return nil, errors.New("pin: no anchor")
	}
	meta := pinMeta{Version: pinFormatVersion, Host: p.Host, Port: p.Port, ServerName: p.ServerName,
		Policy: p.Policy, FirstSeen: p.FirstSeen.UTC(), Updated: p.Updated.UTC()}
	for _, a := range p.Anchors {
		meta.Anchors = append(meta.Anchors, anchorMeta{Subject: a.Subject.String(), SPKISHA256: SPKIHash(a), NotAfter: a.NotAfter.UTC()})
	}
	for _, c := range p.Intermediates {
		meta.Intermediates = append(meta.Intermediates, anchorMeta{Subject: c.Subject.String(), SPKISHA256: SPKIHash(c), NotAfter: c.NotAfter.UTC()})
	}
	js, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	js = jsonEscapeNonPrintable(js)
	var b bytes.Buffer
	// Every line below is one line: names are escaped (Printable, Quote),
	// so a certificate's text cannot start a line of its own.
	addr := Printable(p.Host) + ":" + strconv.Itoa(p.Port)
	fmt.Fprintf(&b, "# pgverifyproxy pin: the trust anchor(s) of upstream %s (certificate name %s), policy %s.\n", addr, Printable(p.VerifyName()), Printable(p.Policy))
	fmt.Fprintf(&b, "# Usable as a libpq root certificate: psql \"sslmode=verify-full sslrootcert=THIS_FILE host=%s port=%d ...\"\n", Printable(p.VerifyName()), p.Port)
	fmt.Fprintf(&b, "# Do not edit. After a change you have confirmed with the provider: pgverifyproxy chain fetch --upstream %s --repin\n", addr)
	for i, a := range p.Anchors {
		fmt.Fprintf(&b, "# anchor %d: %s; SPKI SHA-256 %s; valid until %s\n", i+1, Quote(a.Subject.String()), SPKIHash(a), a.NotAfter.UTC().Format("2006-01-02"))
	}
	for i, c := range p.Intermediates {
		fmt.Fprintf(&b, "# intermediate %d (for building the path; the proxy trusts only the anchors): %s; valid until %s\n", i+1, Quote(c.Subject.String()), c.NotAfter.UTC().Format("2006-01-02"))
	}
	b.WriteString(metaPrefix)
	b.Write(js)
	b.WriteByte('\n')
	// Anchors first, then intermediates: libpq (OpenSSL) does not fetch
	// AIA, so it needs them when a server sends only its leaf.
	for _, a := range append(append([]*x509.Certificate{}, p.Anchors...), p.Intermediates...) {
		if err := pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: a.Raw}); err != nil {
			return nil, err
		}
	}
	return b.Bytes(), nil
}

// jsonEscapeNonPrintable rewrites, in JSON from json.Marshal, every
// character that is not printable (DEL, C1 controls, bidi overrides, line
// separators; Marshal escapes only those below 0x20) as its \uXXXX escape,
// which decodes to the same string: a pin file's metadata line stays one
// safe line on a terminal whatever a certificate's subject holds.
func jsonEscapeNonPrintable(js []byte) []byte {
	var out []byte
	for i := 0; i < len(js); {
		r, size := utf8.DecodeRune(js[i:])
		if unicode.IsPrint(r) || r == utf8.RuneError && size == 1 {
			// Marshal makes valid UTF-8; a lone RuneError cannot occur.
			if out != nil {
				out = append(out, js[i:i+size]...)
			}
			i += size
			continue
		}
		if out == nil {
			out = append([]byte{}, js[:i]...)
		}
		for _, u := range utf16.Encode([]rune{r}) {
			out = fmt.Appendf(out, `\u%04x`, u)
		}
		i += size
	}
	if out == nil {
		return js
	}
	return out
}

// ParsePin reads a pin file. Anything inconsistent (no metadata, anchors that
// do not match the metadata, unparsable certificates) is an error: a damaged
// pin is never silently replaced.
func ParsePin(data []byte) (*Pin, error) {
	var meta *pinMeta
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, metaPrefix) {
			if meta != nil {
				return nil, errors.New("two metadata lines")
			}
			meta = &pinMeta{}
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, metaPrefix)), meta); err != nil {
				return nil, fmt.Errorf("metadata line: %w", err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if meta == nil {
		return nil, errors.New("no metadata line (not a pgverifyproxy pin file?)")
	}
	if meta.Version != pinFormatVersion {
		return nil, fmt.Errorf("metadata version %d is not %d", meta.Version, pinFormatVersion)
	}
	p := &Pin{Host: meta.Host, Port: meta.Port, ServerName: meta.ServerName, Policy: meta.Policy,
		FirstSeen: meta.FirstSeen, Updated: meta.Updated}
	certs, others, err := pemCertificates(data)
	if err != nil {
		return nil, err
	}
	if len(others) > 0 {
		return nil, fmt.Errorf("unexpected PEM block %q", others[0])
	}
	if len(meta.Anchors) == 0 {
		return nil, errors.New("no anchor in the metadata")
	}
	if want := len(meta.Anchors) + len(meta.Intermediates); len(certs) != want {
		return nil, fmt.Errorf("%d certificate(s) but the metadata lists %d", len(certs), want)
	}
	expected := append(append([]anchorMeta{}, meta.Anchors...), meta.Intermediates...)
	for i, c := range certs {
		if got := SPKIHash(c); got != expected[i].SPKISHA256 {
			return nil, fmt.Errorf("certificate %d has SPKI %s but the metadata says %s", i+1, got, expected[i].SPKISHA256)
		}
	}
	p.Anchors = certs[:len(meta.Anchors)]
	p.Intermediates = certs[len(meta.Anchors):]
	return p, nil
}

// PinStore keeps one pin file per upstream (host, port, server name) in Dir.
type PinStore struct {
	// Dir holds the pin files; created 0700 when missing.
	Dir string

	// crashAfter, in tests, stops a write after that many bytes of the
	// temporary file, as a crash would.
	crashAfter int
}

// Path returns the pin file of an upstream.
func (s *PinStore) Path(host string, port int, serverName string) string {
	name := safeName(host) + "_" + strconv.Itoa(port)
	if serverName != "" && serverName != host {
		name += "_" + safeName(serverName)
	}
	return filepath.Join(s.Dir, name+".pem")
}

// safeName keeps letters, digits, dots and dashes.
func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-':
			return r
		}
		return '-'
	}, s)
}

// Load reads the pin of an upstream; ErrNoPin when there is none. A pin file
// that cannot be read or parsed is an error that names the file, and so is
// a pin directory or file that another user could have written (see
// checkPrivate), or a pin file that is a symbolic link.
func (s *PinStore) Load(host string, port int, serverName string) (*Pin, error) {
	path := s.Path(host, port, serverName)
	data, err := readPinFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoPin
	}
	if err != nil {
		return nil, err
	}
	if err := s.checkDir(); err != nil {
		return nil, err
	}
	p, err := ParsePin(data)
	if err != nil {
		return nil, fmt.Errorf("pin file %s is damaged (%v); it was left as it is: inspect it, then remove it or re-pin with pgverifyproxy chain fetch --repin", path, err)
	}
	if p.Host != host || p.Port != port || p.ServerName != serverName {
		return nil, fmt.Errorf("pin file %s belongs to %s:%d (server name %q), not %s:%d (server name %q)", path, p.Host, p.Port, p.ServerName, host, port, serverName)
	}
	return p, nil
}

// ErrPinExists means SaveNew found a pin already there: another process
// pinned the upstream first.
var ErrPinExists = errors.New("a pin for this upstream exists already")

// Save writes the pin atomically (temporary file, fsync, rename, fsync of the
// directory) with mode 0600, so a crash leaves either the old pin or the new
// one, never a mix. It replaces an existing pin (a re-pin).
func (s *PinStore) Save(p *Pin) (string, error) { return s.save(p, false) }

// SaveNew writes a first pin like Save, but only if there is none yet: when
// two processes pin the same upstream at once, the second gets ErrPinExists
// and should load the first one's pin instead of replacing it.
func (s *PinStore) SaveNew(p *Pin) (string, error) { return s.save(p, true) }

func (s *PinStore) save(p *Pin, exclusive bool) (string, error) {
	data, err := p.Encode()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return "", fmt.Errorf("pin: creating %s: %w", s.Dir, err)
	}
	if err := s.checkDir(); err != nil {
		return "", err
	}
	path := s.Path(p.Host, p.Port, p.ServerName)
	if err := writeFileAtomic(path, data, s.crashAfter, exclusive); err != nil {
		return path, fmt.Errorf("pin: %w", err)
	}
	return path, nil
}

// checkDir refuses a pin directory another local user could write to.
func (s *PinStore) checkDir() error {
	st, err := os.Stat(s.Dir)
	if err != nil {
		return fmt.Errorf("pin: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("pin: %s is not a directory", s.Dir)
	}
	return checkPrivate(s.Dir, st)
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory, with mode 0600.
func WriteFileAtomic(path string, data []byte) error { return writeFileAtomic(path, data, 0, false) }

// writeFileAtomic writes data to path through a temporary file. With
// exclusive, the file takes the name only if nothing has it (a hard link,
// which fails when the name exists), else ErrPinExists.
func writeFileAtomic(path string, data []byte, crashAfter int, exclusive bool) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if crashAfter > 0 && crashAfter < len(data) {
		_, _ = tmp.Write(data[:crashAfter])
		_ = tmp.Sync()
		os.Exit(3) // simulated crash: no cleanup, no rename
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if exclusive {
		err := os.Link(tmpName, path)
		if err != nil && !errors.Is(err, fs.ErrExist) {
			// A file system without hard links (some network and FUSE
			// mounts): the name is checked, then taken by a rename; a
			// second process in that window is not detected.
			if _, lerr := os.Lstat(path); lerr == nil {
				err = fs.ErrExist
			} else if rerr := os.Rename(tmpName, path); rerr == nil {
				err = nil
			}
		}
		os.Remove(tmpName)
		ok = true
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("writing %s: %w", path, ErrPinExists)
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	} else if err := os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
