// Package cbt is Ferry's changed-block tracking: a write splitter that
// records every write of a VM's disks in write order into a bounded change
// queue, and a dirty bitmap per disk that takes over when the queue
// overflows. While the tracker is in bitmap mode the stream it feeds is not
// write-ordered, and no crash-consistent point may be cut until the bitmap
// has been drained.
package cbt

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ferrydr/ferry/pkg/blockdev"
)

// Mode says how the tracker records writes.
type Mode int

const (
	// ModeQueue records every write, in order, in the change queue.
	ModeQueue Mode = iota
	// ModeBitmap records only which blocks are dirty.
	ModeBitmap
)

func (m Mode) String() string {
	if m == ModeQueue {
		return "queue"
	}
	return "bitmap"
}

// MarkRequest asks for a recovery point at its place in the stream.
type MarkRequest struct {
	App  bool
	Tag  string
	Time time.Time
}

// Change is one entry of the change queue: a write (Data set) or a marker.
type Change struct {
	Disk int
	Off  int64
	Data []byte
	Mark *MarkRequest
}

// size is what the change counts against the queue's bound.
func (c Change) size() int64 { return int64(len(c.Data)) + 64 }

// Tracker tracks the changes of one VM's disks. Writes through the devices
// returned by Device are applied to the underlying disk and recorded under
// one lock, so the order of records is the order in which the writes took
// effect. All methods are safe for concurrent use.
type Tracker struct {
	devs      []blockdev.Device
	queueCap  int64
	blockSize int64

	// gate lets writes in (read-locked by each write) unless a replication
	// group's barrier holds them (write-locked).
	gate      sync.RWMutex
	mu        sync.Mutex
	mode      Mode
	queue     []Change
	head      int // queue[head:] is pending
	qBytes    int64
	bitmaps   []*Bitmap
	overflows int64
	notify    chan struct{}
}

// NewTracker tracks devs (in the VM's disk order) with a change queue of at
// most queueBytes bytes. It starts in queue mode with clean bitmaps.
func NewTracker(devs []blockdev.Device, queueBytes int64) *Tracker {
	t := &Tracker{
		devs:      devs,
		queueCap:  queueBytes,
		blockSize: blockdev.BlockSize,
		notify:    make(chan struct{}, 1),
	}
	for _, d := range devs {
		t.bitmaps = append(t.bitmaps, NewBitmap(d.Size(), t.blockSize))
	}
	return t
}

// Device returns the write splitter for disk i: a Device whose writes are
// recorded before they return.
func (t *Tracker) Device(i int) blockdev.Device { return &splitter{t: t, disk: i} }

// Notify returns a channel that receives a value after something was
// recorded.
func (t *Tracker) Notify() <-chan struct{} { return t.notify }

// Wake makes Notify fire, for a consumer that has other work to look at.
func (t *Tracker) Wake() { t.signal() }

func (t *Tracker) signal() {
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

func (t *Tracker) write(ctx context.Context, disk int, p []byte, off int64, owned bool) (int, error) {
	if off%t.blockSize != 0 || int64(len(p))%t.blockSize != 0 {
		// The stream carries whole blocks; an unaligned write would need a
		// read-modify-write that could reorder with other writes.
		return 0, fmt.Errorf("write %d bytes at offset %d: not aligned to %d-byte blocks", len(p), off, t.blockSize)
	}
	t.gate.RLock()
	defer t.gate.RUnlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	n, err := t.devs[disk].WriteAt(ctx, p, off)
	if n > 0 {
		t.recordLocked(Change{Disk: disk, Off: off, Data: p[:n]}, owned)
	}
	return n, err
}

// recordLocked queues a change, or marks it in the bitmap. The queue keeps
// c.Data itself when owned (the writer handed it over), else a copy.
func (t *Tracker) recordLocked(c Change, owned bool) {
	if t.mode == ModeQueue && t.qBytes+c.size() > t.queueCap {
		t.overflows++
		t.toBitmapLocked()
	}
	if t.mode == ModeBitmap {
		t.bitmaps[c.Disk].SetRange(c.Off, int64(len(c.Data)))
	} else {
		if !owned {
			c.Data = append([]byte(nil), c.Data...)
		}
		t.queue = append(t.queue, c)
		t.qBytes += c.size()
	}
	t.signal()
}

// toBitmapLocked moves every queued write into the bitmaps and switches to
// bitmap mode. Queued markers are dropped: no point can be cut until the
// bitmap has drained.
func (t *Tracker) toBitmapLocked() {
	for _, c := range t.queue[t.head:] {
		if c.Mark == nil {
			t.bitmaps[c.Disk].SetRange(c.Off, int64(len(c.Data)))
		}
	}
	t.queue, t.head, t.qBytes = nil, 0, 0
	t.mode = ModeBitmap
}

// Hold waits for the writes in progress to finish and holds every new
// write until Release: a replication group cuts its common marker while
// all its machines are held.
func (t *Tracker) Hold() { t.gate.Lock() }

// Release lets held writes go on.
func (t *Tracker) Release() { t.gate.Unlock() }

// Mark queues a marker. It returns false, queuing nothing, in bitmap mode.
func (t *Tracker) Mark(m MarkRequest) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mode != ModeQueue {
		return false
	}
	c := Change{Mark: &m}
	if t.qBytes+c.size() > t.queueCap {
		return false
	}
	t.queue = append(t.queue, c)
	t.qBytes += c.size()
	t.signal()
	return true
}

// Pop removes and returns queued changes in order, at least one if any is
// queued, and no more than maxBytes of data beyond the first.
func (t *Tracker) Pop(maxBytes int64) []Change {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Change
	var n int64
	for t.head < len(t.queue) {
		c := t.queue[t.head]
		if len(out) > 0 && n+int64(len(c.Data)) > maxBytes {
			break
		}
		out = append(out, c)
		n += int64(len(c.Data))
		t.queue[t.head] = Change{}
		t.head++
		t.qBytes -= c.size()
	}
	if t.head == len(t.queue) {
		t.queue, t.head = t.queue[:0], 0
	} else if t.head > 1024 && t.head > len(t.queue)/2 {
		t.queue = append(t.queue[:0:0], t.queue[t.head:]...)
		t.head = 0
	}
	return out
}

// Unpop puts changes that were popped but not sent back at the front of
// the queue, in order. In bitmap mode their writes are marked dirty
// instead (and markers dropped). The queue may exceed its bound by them.
func (t *Tracker) Unpop(changes []Change) {
	if len(changes) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mode == ModeBitmap {
		for _, c := range changes {
			if c.Mark == nil {
				t.bitmaps[c.Disk].SetRange(c.Off, int64(len(c.Data)))
			}
		}
		t.signal()
		return
	}
	q := make([]Change, 0, len(changes)+len(t.queue)-t.head)
	q = append(q, changes...)
	q = append(q, t.queue[t.head:]...)
	t.queue, t.head = q, 0
	for _, c := range changes {
		t.qBytes += c.size()
	}
	t.signal()
}

// EnterBitmap switches to bitmap mode, moving queued writes into the bitmaps.
func (t *Tracker) EnterBitmap() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.toBitmapLocked()
	t.signal()
}

// MarkDirty marks a range of disk dirty. The tracker should be in bitmap
// mode, or the range is sent twice: once from the queue, once from the
// bitmap.
func (t *Tracker) MarkDirty(disk int, off, length int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.bitmaps[disk].SetRange(off, length)
	t.signal()
}

// MarkAllDirty marks every block of every disk dirty.
func (t *Tracker) MarkAllDirty() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range t.bitmaps {
		b.SetAll()
	}
	t.signal()
}

// TakeDirty clears and returns the next run of at most maxBytes of dirty
// blocks, searching the disks in order. The caller reads the run's current
// content after TakeDirty returns: a write that lands meanwhile marks its
// blocks dirty again, so the run is read again later.
func (t *Tracker) TakeDirty(maxBytes int64) (disk int, off, length int64, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, b := range t.bitmaps {
		if first, n := b.TakeRun(maxBytes / t.blockSize); n > 0 {
			off := first * t.blockSize
			return i, off, min(n*t.blockSize, t.devs[i].Size()-off), true
		}
	}
	return 0, 0, 0, false
}

// FinishDrain switches back to queue mode if no block is dirty, and reports
// whether it did. From then on the stream is write-ordered again.
func (t *Tracker) FinishDrain() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range t.bitmaps {
		if b.Count() > 0 {
			return false
		}
	}
	t.mode = ModeQueue
	return true
}

// Stats is a snapshot of the tracker.
type Stats struct {
	Mode        Mode
	QueueBytes  int64
	QueueLen    int
	DirtyBlocks int64
	Overflows   int64
}

// Stats returns a snapshot of the tracker's state.
func (t *Tracker) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := Stats{Mode: t.mode, QueueBytes: t.qBytes, QueueLen: len(t.queue) - t.head, Overflows: t.overflows}
	for _, b := range t.bitmaps {
		s.DirtyBlocks += b.Count()
	}
	return s
}

// SaveBitmaps persists each disk's bitmap to path(i).
func (t *Tracker) SaveBitmaps(path func(disk int) string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, b := range t.bitmaps {
		if err := b.Save(path(i)); err != nil {
			return err
		}
	}
	return nil
}

// LoadBitmaps merges persisted bitmaps into the tracker's and switches to
// bitmap mode if any block is dirty.
func (t *Tracker) LoadBitmaps(path func(disk int) string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, d := range t.devs {
		b, err := LoadBitmap(path(i), d.Size(), t.blockSize)
		if err != nil {
			return err
		}
		t.bitmaps[i].Merge(b)
	}
	for _, b := range t.bitmaps {
		if b.Count() > 0 {
			t.toBitmapLocked()
			break
		}
	}
	return nil
}

type splitter struct {
	t    *Tracker
	disk int
}

func (s *splitter) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return s.t.devs[s.disk].ReadAt(ctx, p, off)
}

func (s *splitter) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	return s.t.write(ctx, s.disk, p, off, false)
}

// WriteAtHandoff is WriteAt that queues p itself instead of a copy: the
// caller hands p over and must not touch it again.
func (s *splitter) WriteAtHandoff(ctx context.Context, p []byte, off int64) (int, error) {
	return s.t.write(ctx, s.disk, p, off, true)
}

func (s *splitter) Size() int64 { return s.t.devs[s.disk].Size() }

func (s *splitter) Sync(ctx context.Context) error { return s.t.devs[s.disk].Sync(ctx) }
