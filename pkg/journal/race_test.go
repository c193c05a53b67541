//go:build race

package journal_test

// raceEnabled: the race detector slows everything about tenfold; the
// fault tests then inject fewer faults.
const raceEnabled = true
