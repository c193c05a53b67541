// Package journaltest holds test helpers for code that uses the journal.
package journaltest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/ferrydr/ferry/pkg/journal"
)

// MustOpen opens a journal in a temporary directory and registers a cleanup
// that checks its invariants (MustCheck) and closes it.
func MustOpen(tb testing.TB) *journal.Journal {
	tb.Helper()
	j, err := journal.Open(filepath.Join(tb.TempDir(), "journal.db"), journal.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		MustCheck(tb, j)
		j.Close()
	})
	return j
}

// MustCheck fails the test if the journal breaks an invariant: a sequence
// gap, a payload that does not match its checksum, a dangling point.
func MustCheck(tb testing.TB, j *journal.Journal) {
	tb.Helper()
	if err := j.Check(context.Background()); err != nil {
		tb.Fatalf("journal invariant broken: %v", err)
	}
}
