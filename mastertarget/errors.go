package mastertarget

import "errors"

// The master target's sentinel errors. Callers match them with errors.Is;
// its API answers each with one gRPC code (toStatus).
var (
	// ErrInvalidRequest: the request names something wrong.
	ErrInvalidRequest = errors.New("invalid request")
	// ErrState: the VM's reverse replication does not allow it now.
	ErrState = errors.New("not possible now")
	// ErrUnknownVM: the VM is not registered for reverse replication here.
	ErrUnknownVM = errors.New("unknown vm")
	// ErrNotCut: a multi-VM point was not cut (a member did not hold).
	ErrNotCut = errors.New("multi-VM point not cut")
)
