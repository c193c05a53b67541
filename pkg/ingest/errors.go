package ingest

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"

	"github.com/ferrydr/ferry/pkg/wire"
)

var (
	// ErrBadHello is returned for a stream that does not open with a valid
	// hello.
	ErrBadHello = errors.New("invalid hello")
	// ErrHelloTimeout ends a stream that sent no hello within
	// Config.HelloTimeout.
	ErrHelloTimeout = errors.New("no hello in time")
	// ErrBadRecord is returned for a record that breaks the stream's rules;
	// nothing of its batch is stored.
	ErrBadRecord = errors.New("invalid record")
	// ErrChecksum is returned when a write's data does not match its xxhash.
	ErrChecksum = errors.New("write data does not match its xxhash")
	// ErrTransit is returned when a record does not match its check.
	ErrTransit = errors.New("record does not match its check")
	// ErrEpoch is returned to an agent of another replication direction.
	ErrEpoch = errors.New("epoch mismatch")
	// ErrEpochAhead is returned to an agent of a direction not active yet:
	// it waits (retries) until a reprotect raises the VM to its epoch.
	ErrEpochAhead = errors.New("replication direction not active yet")
	// ErrGeometry is returned when an agent's disks differ from the replica's.
	ErrGeometry = errors.New("disks differ from the replica's")
	// ErrTooLarge is returned for a batch or write above the configured limit.
	ErrTooLarge = errors.New("message too large")
	// ErrSuperseded ends a stream when a newer stream for the same VM arrives.
	ErrSuperseded = errors.New("a newer stream for this VM took over")
	// ErrDenied is returned when the peer may not write the VM.
	ErrDenied = errors.New("not authorized for this VM")
	// ErrClosed is returned when the receiver is shutting down.
	ErrClosed = errors.New("receiver is shutting down")
	// ErrNotDurable ends a stream whose records were journaled but could
	// not be made durable where a takeover finds them (Config.Ship
	// failed): they are not acknowledged; the process server ships them
	// from its journal before it answers the agent's next hello.
	ErrNotDurable = errors.New("records not yet durable where a takeover finds them")
	// ErrElsewhere refuses a stream of a VM that another process server
	// serves: the agent connects there.
	ErrElsewhere = errors.New("the VM is served by another process server")
)

// RecordError names the record that was refused and why.
type RecordError struct {
	VM  string
	Seq uint64
	Err error
	Msg string
}

func (e *RecordError) Error() string {
	return fmt.Sprintf("vm %s: record %d: %v: %s", e.VM, e.Seq, e.Err, e.Msg)
}

func (e *RecordError) Unwrap() error { return e.Err }

// grpcStatus maps an error to the status a stream ends with.
func grpcStatus(err error) error { return wire.Status(err, statusCodes) }

// statusCodes answers each sentinel with one gRPC code.
var statusCodes = []wire.Code{
	// Most likely damaged on the way: the agent sends it again.
	{Err: ErrChecksum, Code: codes.DataLoss},
	{Err: ErrTransit, Code: codes.DataLoss},
	{Err: ErrBadHello, Code: codes.InvalidArgument},
	{Err: ErrHelloTimeout, Code: codes.DeadlineExceeded},
	{Err: ErrBadRecord, Code: codes.InvalidArgument},
	{Err: ErrEpoch, Code: codes.FailedPrecondition},
	{Err: ErrGeometry, Code: codes.FailedPrecondition},
	{Err: ErrTooLarge, Code: codes.ResourceExhausted},
	{Err: ErrSuperseded, Code: codes.Aborted},
	{Err: ErrDenied, Code: codes.PermissionDenied},
	{Err: ErrClosed, Code: codes.Unavailable},
	{Err: ErrNotDurable, Code: codes.Unavailable},
	{Err: ErrElsewhere, Code: codes.Unavailable},
	{Err: ErrEpochAhead, Code: codes.Unavailable},
}
