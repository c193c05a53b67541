package ferry

import "fmt"

// Recovery point names an operator may use instead of a point's ID.
const (
	// PointLatest first cuts a point at the end of everything received
	// (the lowest RPO; processing takes its time).
	PointLatest = "latest"
	// PointLatestProcessed is the newest point already cut (the lowest RTO).
	PointLatestProcessed = "latest-processed"
	// PointLatestApp is the newest app-consistent point.
	PointLatestApp = "latest-app"
	// PointLatestMultiVMProcessed is, in a recovery plan, the newest point
	// every member of a replication group shares.
	PointLatestMultiVMProcessed = "latest-multivm-processed"
	// PointLatestMultiVMApp is the newest app-consistent point every member
	// of a replication group shares.
	PointLatestMultiVMApp = "latest-multivm-app"
)

// Location is where a reprotect and failback put a VM back.
type Location string

const (
	// LocationOriginal: the primary machine's own disks; only blocks that
	// differ are sent.
	LocationOriginal Location = "original"
	// LocationAlternate: new disks at the primary site; everything is sent.
	LocationAlternate Location = "alternate"
)

// Valid reports whether l is one of the locations.
func (l Location) Valid() bool { return l == LocationOriginal || l == LocationAlternate }

// ParseLocation reads an operator's location; empty means original.
func ParseLocation(s string) (Location, error) {
	switch l := Location(s); l {
	case "":
		return LocationOriginal, nil
	case LocationOriginal, LocationAlternate:
		return l, nil
	}
	return "", fmt.Errorf("location %q: want %s or %s", s, LocationOriginal, LocationAlternate)
}

// SyncMode is when a failback synchronizes the primary with the recovered
// VM.
type SyncMode string

const (
	// SyncBefore synchronizes while the recovered VM still runs, and again
	// with what changed once it is shut down: the shortest downtime.
	SyncBefore SyncMode = "before"
	// SyncDuring moves nothing before the failback, and everything while
	// the recovered VM is shut down.
	SyncDuring SyncMode = "during"
)

// Valid reports whether m is one of the sync modes.
func (m SyncMode) Valid() bool { return m == SyncBefore || m == SyncDuring }

// ParseSyncMode reads an operator's sync mode; empty means before.
func ParseSyncMode(s string) (SyncMode, error) {
	switch m := SyncMode(s); m {
	case "":
		return SyncBefore, nil
	case SyncBefore, SyncDuring:
		return m, nil
	}
	return "", fmt.Errorf("sync %q: want %s or %s", s, SyncBefore, SyncDuring)
}

// Outcome is how a job or one of its steps ended (or that it still runs).
type Outcome string

const (
	OutcomeRunning   Outcome = "running"
	OutcomeSucceeded Outcome = "succeeded"
	OutcomeFailed    Outcome = "failed"
	OutcomeSkipped   Outcome = "skipped"
	// OutcomeInterrupted: the server stopped while the job ran.
	OutcomeInterrupted Outcome = "interrupted"
)
