//go:build race

package clusterdrill_test

// raceEnabled: the drill's servers are processes of their own, built
// without the race detector; under it only the agents slow down, and the
// drill's phases are wall-clock time.
const raceEnabled = true
