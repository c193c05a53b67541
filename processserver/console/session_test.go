package console

import (
	"errors"
	"testing"
	"time"
)

// TestBounds: at most maxEntries links and maxEntries sessions are kept;
// the next is refused until some expire.
func TestBounds(t *testing.T) {
	clk := &clock{now: time.Now()}
	s := newSessions(clk.Now)
	for i := 0; i < maxEntries; i++ {
		if _, _, err := s.issue(alice, nil, time.Minute); err != nil {
			t.Fatalf("link %d: %v", i, err)
		}
	}
	if _, _, err := s.issue(alice, nil, time.Minute); !errors.Is(err, ErrTooMany) {
		t.Fatalf("link %d: %v", maxEntries+1, err)
	}
	clk.Add(time.Minute + time.Nanosecond)
	if _, _, err := s.issue(alice, nil, time.Minute); err != nil {
		t.Fatalf("a link once the others expired: %v", err)
	}

	s = newSessions(clk.Now)
	for i := 0; i < maxEntries; i++ {
		tok, _, err := s.issue(alice, nil, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.redeem(tok, 1000*time.Hour); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		clk.Add(2 * time.Minute) // the used link expires
	}
	tok, _, err := s.issue(alice, nil, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.redeem(tok, 1000*time.Hour); !errors.Is(err, ErrTooMany) {
		t.Fatalf("session %d: %v", maxEntries+1, err)
	}
}
