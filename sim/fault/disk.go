package fault

import (
	"context"
	"errors"
	"sync"
	"syscall"

	"github.com/ferrydr/ferry/pkg/blockdev"
)

// Disk is a block device that models what real storage does when things
// go wrong: writes since the last Sync are volatile and a power loss drops
// them (tearing the last one, optionally), and errors can be injected at
// chosen calls: ENOSPC or EIO on a write, a short write, EIO on Sync.
// After Crash every call fails, as the process that made them is gone.
type Disk struct {
	mu      sync.Mutex
	durable *blockdev.Memory // what survives a power loss
	current *blockdev.Memory // what reads see
	pending []pendingWrite   // writes since the last Sync, in order
	ops     int              // WriteAt and Sync calls so far
	crashAt int              // crash when ops reaches it (0: never)
	crashed bool
	fail    map[int]error // op number -> error to return
	syncErr error         // every Sync fails with it
	short   map[int]int   // op number -> bytes a short write takes
}

type pendingWrite struct {
	off  int64
	data []byte
}

// ErrCrashed is what every call returns after the crash point.
var ErrCrashed = errors.New("fault: the process crashed")

// NewDisk returns a zeroed disk of size bytes.
func NewDisk(size int64) *Disk {
	return &Disk{durable: blockdev.NewMemory(size), current: blockdev.NewMemory(size), fail: map[int]error{}, short: map[int]int{}}
}

// DiskFrom returns a disk whose durable and current content is img's.
func DiskFrom(img *blockdev.Memory) *Disk {
	d := NewDisk(img.Size())
	d.durable, d.current = img.Snapshot(), img.Snapshot()
	return d
}

// CrashAt makes the disk crash at its nth WriteAt or Sync call: that call
// and every later one fail with ErrCrashed.
func (d *Disk) CrashAt(n int) { d.mu.Lock(); d.crashAt = n; d.mu.Unlock() }

// FailAt makes call n (WriteAt or Sync) fail with err (e.g. syscall.ENOSPC,
// syscall.EIO) without effect.
func (d *Disk) FailAt(n int, err error) { d.mu.Lock(); d.fail[n] = err; d.mu.Unlock() }

// FailSyncs makes every Sync fail with err (nil: stop).
func (d *Disk) FailSyncs(err error) { d.mu.Lock(); d.syncErr = err; d.mu.Unlock() }

// ShortAt makes WriteAt call n write only its first k bytes and fail.
func (d *Disk) ShortAt(n, k int) { d.mu.Lock(); d.short[n] = k; d.mu.Unlock() }

// Ops is how many WriteAt and Sync calls the disk has seen.
func (d *Disk) Ops() int { d.mu.Lock(); defer d.mu.Unlock(); return d.ops }

// PowerLoss drops every write since the last Sync; with tear, the oldest
// of them reached the medium in part (its first sectors). The disk then
// reads what survived and works again.
func (d *Disk) PowerLoss(tear bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if tear && len(d.pending) > 0 {
		w := d.pending[0]
		if n := len(w.data) / 512 / 2 * 512; n > 0 {
			d.durable.WriteAt(context.Background(), w.data[:n], w.off)
		}
	}
	d.pending = nil
	d.current = d.durable.Snapshot()
	d.crashed, d.crashAt, d.ops, d.syncErr = false, 0, 0, nil
	clear(d.fail)
	clear(d.short)
}

// Durable is what a power loss now would leave.
func (d *Disk) Durable() *blockdev.Memory {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.durable.Snapshot()
}

// step counts a call and says how it fails, if it does.
func (d *Disk) step() (op int, err error) {
	if d.crashed {
		return 0, ErrCrashed
	}
	d.ops++
	if d.crashAt > 0 && d.ops >= d.crashAt {
		d.crashed = true
		return d.ops, ErrCrashed
	}
	return d.ops, d.fail[d.ops]
}

// ReadAt implements blockdev.Device.
func (d *Disk) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.crashed {
		return 0, ErrCrashed
	}
	return d.current.ReadAt(ctx, p, off)
}

// WriteAt implements blockdev.Device.
func (d *Disk) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off > d.current.Size()-int64(len(p)) {
		// Refused like any device's, before it counts as a step.
		return d.current.WriteAt(ctx, p, off)
	}
	op, err := d.step()
	if err != nil {
		return 0, err
	}
	n := len(p)
	if k, ok := d.short[op]; ok && k < n {
		n, err = k, syscall.EIO
	}
	if n > 0 {
		d.current.WriteAt(ctx, p[:n], off)
		d.pending = append(d.pending, pendingWrite{off: off, data: append([]byte(nil), p[:n]...)})
	}
	return n, err
}

// Sync implements blockdev.Device: what was written becomes durable.
func (d *Disk) Sync(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, err := d.step()
	if err == nil {
		err = d.syncErr
	}
	if err != nil {
		if err != ErrCrashed {
			// As with Linux after a failed fsync: the writes are no longer
			// dirty, so they will never reach the medium, yet reads still
			// see them. Retrying the Sync would wrongly succeed.
			d.pending = nil
		}
		return err
	}
	for _, w := range d.pending {
		d.durable.WriteAt(ctx, w.data, w.off)
	}
	d.pending = nil
	return nil
}

// Size implements blockdev.Device.
func (d *Disk) Size() int64 { return d.current.Size() }
