package chain

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// DefaultRefetchInterval spaces the attempts to pin an upstream that could
// not be trusted yet (e.g. a self-signed leaf that the provider will replace).
const DefaultRefetchInterval = 30 * time.Second

// PinTrust is the TrustSource of a route without --ca-file: the upstream's
// pin, re-read when its file changes (a `chain fetch --repin` takes effect
// without a restart), and fetched under Policy when there is none yet.
type PinTrust struct {
	// Store holds the pin files.
	Store *PinStore
	// Dialer reaches the upstream for the first fetch.
	Dialer *Dialer
	// Policy applies to a first pin.
	Policy Policy
	// System is the system trust store.
	System *x509.CertPool
	// AIA completes chains; shared by fetch and verification (cached).
	AIA *Completer
	// RefetchInterval spaces failed first-pin attempts; zero means
	// DefaultRefetchInterval.
	RefetchInterval time.Duration
	// OnPinned is called after a first pin was written.
	OnPinned func(p *Pin, path string)
	// Repin is the command that replaces the pin, named when the
	// upstream's identity changed.
	Repin string

	mu          sync.Mutex
	pin         *Pin
	file        os.FileInfo // of the pin file in use: a re-pin is a new file (rename)
	lastAttempt time.Time
	lastErr     error
	generation  uint64
}

// Generation is a number that changes whenever the pin in use changes: a
// pin written, replaced (chain fetch --repin) or removed. A connection
// verified under one generation must not be handed out under another. It
// looks at the pin file (a stat) but never fetches.
func (t *PinTrust) Generation() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.Dialer
	st, err := os.Stat(t.Store.Path(d.Host, d.Port, d.ServerName))
	switch {
	case err != nil && t.pin != nil:
		// The pin was removed (or cannot be read): what was verified
		// under it no longer counts.
		t.pin, t.file = nil, nil
		t.generation++
	case err == nil && t.pin != nil && !samePinFile(t.file, st):
		// Replaced: reloaded by the next Current.
		t.pin = nil
		t.generation++
	}
	return t.generation
}

// Verifier implements TrustSource.
func (t *PinTrust) Verifier(ctx context.Context) (*Verifier, error) {
	p, path, err := t.Current(ctx)
	if err != nil {
		return nil, err
	}
	return p.Verifier(path, t.AIA, t.System, t.Repin), nil
}

// Verifier returns the verify-full check of connections under this pin,
// kept in file: a chain must lead to one of its anchors (its intermediates
// and aia only build the path), and one that leads elsewhere is reported
// as a changed identity, naming system's root when it reaches one and the
// repin command.
func (p *Pin) Verifier(file string, aia *Completer, system *x509.CertPool, repin string) *Verifier {
	return &Verifier{
		Roots: p.Pool(), Intermediates: p.Intermediates, AIA: aia,
		Pinned: p.Anchors, PinnedSince: p.FirstSeen, PinFile: file,
		Upstream: net.JoinHostPort(p.Host, strconv.Itoa(p.Port)), System: system, Repin: repin,
		ServerName: p.VerifyName(),
	}
}

// Current returns the pin, reloading it when its file changed and fetching
// it when there is none (at most once per RefetchInterval).
func (t *PinTrust) Current(ctx context.Context) (*Pin, string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.Dialer
	path := t.Store.Path(d.Host, d.Port, d.ServerName)
	st, statErr := os.Stat(path)
	switch {
	case statErr == nil:
		if t.pin != nil && samePinFile(t.file, st) {
			return t.pin, path, nil
		}
		p, err := t.Store.Load(d.Host, d.Port, d.ServerName)
		if err != nil {
			return nil, path, err
		}
		if t.pin != nil {
			t.generation++
		}
		t.pin, t.file = p, st
		return p, path, nil
	case !errors.Is(statErr, os.ErrNotExist):
		return nil, path, fmt.Errorf("pin: %w", statErr)
	}
	// No pin yet: fetch one, but not more often than RefetchInterval.
	interval := t.RefetchInterval
	if interval <= 0 {
		interval = DefaultRefetchInterval
	}
	if t.lastErr != nil && time.Since(t.lastAttempt) < interval {
		return nil, path, t.lastErr
	}
	t.lastAttempt = time.Now()
	p, err := t.fetchPin(ctx)
	if err != nil {
		t.lastErr = err
		return nil, path, err
	}
	saved, err := t.Store.SaveNew(p)
	if errors.Is(err, ErrPinExists) {
		// Another process pinned the upstream meanwhile: its pin is the
		// one, as if this one had started later.
		theirs, lerr := t.Store.Load(d.Host, d.Port, d.ServerName)
		if lerr != nil {
			t.lastErr = lerr
			return nil, path, lerr
		}
		if st, err := os.Stat(path); err == nil {
			t.file = st
		}
		t.lastErr = nil
		t.generation++
		t.pin = theirs
		return theirs, path, nil
	}
	if err != nil {
		t.lastErr = err
		return nil, path, err
	}
	t.lastErr = nil
	t.generation++
	if st, err := os.Stat(saved); err == nil {
		t.file = st
	}
	t.pin = p
	if t.OnPinned != nil {
		t.OnPinned(p, saved)
	}
	return p, saved, nil
}

func (t *PinTrust) fetchPin(ctx context.Context) (*Pin, error) {
	_, _, dec, err := FetchAndDecide(ctx, t.Dialer, t.AIA, t.Policy, t.System, nil)
	if err != nil {
		return nil, err
	}
	return PinFromDecision(t.Dialer, dec, time.Now()), nil
}

// PinFromDecision makes the pin to save for a decision.
func PinFromDecision(d *Dialer, dec *Decision, now time.Time) *Pin {
	return &Pin{Host: d.Host, Port: d.Port, ServerName: d.ServerName, Policy: string(dec.Policy),
		Anchors: dec.Anchors, Intermediates: dec.Intermediates,
		FirstSeen: now, Updated: now}
}

// samePinFile reports whether b is the pin file a was: the same file (a
// re-pin renames a new one into place, so even a same-size replacement
// within one tick of a coarse clock is seen), with the same time and size.
func samePinFile(a, b os.FileInfo) bool {
	return a != nil && os.SameFile(a, b) && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size()
}
