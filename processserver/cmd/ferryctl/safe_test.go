package main

import "testing"

// TestHostileTerminalEscapes: text from guests and agents cannot
// drive the operator's terminal.
func TestHostileTerminalEscapes(t *testing.T) {
	for in, want := range map[string]string{
		"plain text, ünïcode":       "plain text, ünïcode",
		"\x1b[2J\x1b]0;owned\x07ok": `\x1b[2J\x1b]0;owned\x07ok`,
		"two\nlines\ttab":           `two\nlines\x09tab`,
		"bidi\u202eevil":            `bidi\u202eevil`,
		string([]byte{'a', 0xff}):   `a\xff`,
		"c1 \u009b control":         `c1 \x9b control`,
	} {
		if got := safe(in); got != want {
			t.Errorf("safe(%q) = %q, want %q", in, got, want)
		}
	}
}
