// Package blockdev is Ferry's view of a disk: a fixed-size array of bytes
// read and written at offsets. Implementations are a file (a raw image or a
// block device) and a sparse in-memory disk.
package blockdev

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydr/ferry"
)

// BlockSize is the unit of change tracking and of the replication stream.
// Every replicated write covers whole blocks.
const BlockSize = ferry.BlockSize

// Device is a disk. ReadAt and WriteAt follow io.ReaderAt and io.WriterAt:
// they transfer all of p or return an error. Accesses beyond Size fail with
// ErrOutOfRange. Implementations are safe for concurrent use; concurrent
// writes to overlapping ranges leave one of them in place, in no set order.
type Device interface {
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	WriteAt(ctx context.Context, p []byte, off int64) (int, error)
	// Size is the disk's size in bytes; it does not change.
	Size() int64
	// Sync makes every completed write durable.
	Sync(ctx context.Context) error
}

// Extents is a capability of devices that know which ranges hold data.
// DataExtents calls fn for ranges that may hold non-zero bytes, in order;
// everything outside them reads as zeros.
type Extents interface {
	DataExtents(ctx context.Context, fn func(off, length int64) error) error
}

// Handoff is a capability of devices that can keep a write's buffer
// instead of copying it (the write splitter queues it for replication).
// After WriteAtHandoff returns, the caller must not read or change p.
type Handoff interface {
	WriteAtHandoff(ctx context.Context, p []byte, off int64) (int, error)
}

// Versioned is a capability of devices whose content has a version the
// file system keeps: a regular file's identity, size, modification and
// change times. Version returns ok false when the device has none (a block
// device's node does not change when its blocks do).
type Versioned interface {
	Version() (v Version, ok bool, err error)
}

// Version identifies a regular file's content as the file system sees it.
// Two equal versions, read apart in time, mean no write in between, with
// one caveat the caller handles: the file system stamps times at a coarse
// granularity, so a write right after the version was read can leave the
// times as they were (see Version.Settled).
type Version struct {
	Dev, Ino     uint64
	Size         int64
	Mtime, Ctime time.Time
}

// Settled reports whether the version was read long enough (margin) after
// the file's last change that a later write would have moved its times.
func (v Version) Settled(readAt time.Time, margin time.Duration) bool {
	last := v.Mtime
	if v.Ctime.After(last) {
		last = v.Ctime
	}
	return readAt.Sub(last) > margin
}

var (
	// ErrOutOfRange is returned for an access that does not fit in the device.
	ErrOutOfRange = errors.New("access beyond the end of the device")
	// ErrClosed is returned by a device that has been closed.
	ErrClosed = errors.New("device is closed")
	// ErrNoSpace is returned by a device whose space quota is used up.
	ErrNoSpace = errors.New("no space left in the device's quota")
)

// checkRange reports whether [off, off+n) lies within a device of size size.
func checkRange(op string, off int64, n int, size int64) error {
	if off < 0 || int64(n) > size || off > size-int64(n) {
		return fmt.Errorf("%s %d bytes at offset %d of a %d-byte device: %w", op, n, off, size, ErrOutOfRange)
	}
	return nil
}

// IsZero reports whether b holds only zero bytes.
func IsZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
