package journal

import (
	"errors"
	"fmt"

	"github.com/ferrydr/ferry"
)

var (
	// ErrNoVM is returned for a VM the journal does not know.
	ErrNoVM = errors.New("no such VM")
	// ErrVMExists is returned when creating a VM that already exists.
	ErrVMExists = errors.New("VM already exists")
	// ErrNoPoint is returned for a recovery point that does not exist.
	ErrNoPoint = errors.New("no such recovery point")
	// ErrNoDisk is returned for a disk the VM does not have.
	ErrNoDisk = errors.New("no such disk")
	// ErrSequence is returned when a record does not follow the VM's last
	// durable sequence.
	ErrSequence = errors.New("sequence does not follow the last durable sequence")
	// ErrInconsistent is returned when a point is asked for while the VM's
	// stream is not write-ordered (a drain is open or none has completed).
	ErrInconsistent = errors.New("stream is not write-ordered here: no recovery point can be cut")
	// ErrChecksum is returned when stored data does not match its xxhash.
	ErrChecksum = errors.New("stored data does not match its checksum")
	// ErrInvalid is returned for a record that breaks the journal's rules.
	ErrInvalid = errors.New("invalid record")
	// ErrKey is returned when a journal is opened without the key it is
	// encrypted with, or with another key.
	ErrKey = errors.New("journal encryption key")
	// ErrFailed is returned by every write after the journal failed to
	// persist: nothing more is accepted or acknowledged until it is reopened.
	ErrFailed = errors.New("journal failed to persist earlier data and accepts no more writes")
)

// CorruptError locates a stored write whose data failed verification.
type CorruptError struct {
	VM     ferry.VMID
	Seq    ferry.Seq
	Disk   int
	Offset int64
	Err    error
}

func (e *CorruptError) Error() string {
	if e.Disk < 0 {
		return fmt.Sprintf("vm %s: record %d: %v", e.VM, e.Seq, e.Err)
	}
	return fmt.Sprintf("vm %s: write %d (disk %d, offset %d): %v", e.VM, e.Seq, e.Disk, e.Offset, e.Err)
}

func (e *CorruptError) Unwrap() error { return e.Err }
