package chain

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
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

	mu          sync.Mutex
	pin         *Pin
	modTime     time.Time
	size        int64
	lastAttempt time.Time
	lastErr     error
}

// Verifier implements TrustSource.
func (t *PinTrust) Verifier(ctx context.Context) (*Verifier, error) {
	p, path, err := t.Current(ctx)
	if err != nil {
		return nil, err
	}
	return &Verifier{
		Roots: p.Pool(), Intermediates: p.Intermediates, AIA: t.AIA,
		Pinned: p.Anchors, PinnedSince: p.FirstSeen, PinFile: path,
		Upstream: t.Dialer.Addr(), System: t.System,
	}, nil
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
		if t.pin != nil && st.ModTime().Equal(t.modTime) && st.Size() == t.size {
			return t.pin, path, nil
		}
		p, err := t.Store.Load(d.Host, d.Port, d.ServerName)
		if err != nil {
			return nil, path, err
		}
		t.pin, t.modTime, t.size = p, st.ModTime(), st.Size()
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
	saved, err := t.Store.Save(p)
	if err != nil {
		t.lastErr = fmt.Errorf("pin: %w", err)
		return nil, path, t.lastErr
	}
	t.lastErr = nil
	if st, err := os.Stat(saved); err == nil {
		t.modTime, t.size = st.ModTime(), st.Size()
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
		Anchors: []*x509.Certificate{dec.Anchor}, Intermediates: dec.Intermediates,
		FirstSeen: now, Updated: now}
}
