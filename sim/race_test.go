//go:build race

package sim_test

// raceEnabled: the race detector slows everything about tenfold; the
// fault tests then run fewer faults.
const raceEnabled = true
