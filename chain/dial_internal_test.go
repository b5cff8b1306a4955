package chain

import (
	"errors"
	"fmt"
	"testing"
)

// TestAlertAfterHandshake: only a TLS alert is one; its text names it.
func TestAlertAfterHandshake(t *testing.T) {
	if de := AlertAfterHandshake("h:1", errors.New("EOF")); de != nil {
		t.Fatalf("EOF taken as an alert: %v", de)
	}
	de := AlertAfterHandshake("h:1", fmt.Errorf("reading: %w", errors.New("remote error: tls: certificate required")))
	if de == nil || de.Alert != "certificate required" || de.Step != StepAfterHandshake ||
		de.Error() != `upstream h:1: after the TLS handshake: the server ended the TLS session with the alert "certificate required"` {
		t.Fatalf("got %#v (%v)", de, de)
	}
}
