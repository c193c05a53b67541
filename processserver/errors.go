package processserver

import "errors"

// The process server's sentinel errors. Callers match them with errors.Is;
// the operator API maps each to one gRPC code (toStatus).
var (
	// ErrNotFound is wrapped by lookups of named definitions that do not exist.
	ErrNotFound = errors.New("not found")
	// ErrState is returned for an action the VM's state does not allow.
	ErrState = errors.New("action not allowed in this state")
	// ErrNoJob is returned for a job ID that does not exist.
	ErrNoJob = errors.New("no such job")
	// ErrNoMasterTarget is returned for reprotect or failback without one.
	ErrNoMasterTarget = errors.New("no master target configured: start ferry-ps with --master-target")
	// ErrFailover is returned when a failover job fails; the job says why.
	ErrFailover = errors.New("failover failed")
	// ErrInvalidRequest is returned for a request that names something wrong.
	ErrInvalidRequest = errors.New("invalid request")
	// ErrNoNBD is returned when NBD exports are asked for without a listener.
	ErrNoNBD = errors.New("no NBD listener: start ferry-ps with --nbd-listen")
	// ErrNoExport is returned for a name that is not an export.
	ErrNoExport = errors.New("no such NBD export")
	// errUpstreamEnded: a send to the master target found its stream ended.
	errUpstreamEnded = errors.New("the master target's stream ended")
)
