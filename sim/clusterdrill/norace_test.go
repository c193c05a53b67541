//go:build !race

package clusterdrill_test

const raceEnabled = false
