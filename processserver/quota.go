package processserver

import (
	"context"
	"fmt"
	"sync"

	"github.com/ferrydr/ferry/pkg/blockdev"
)

// scratchQuota is the space every writable export's scratch files may
// take together: a client that writes without end gets ENOSPC from its
// export instead of filling the file system the journal lives on.
type scratchQuota struct {
	mu    sync.Mutex
	limit int64
	used  int64
	slots map[string]int64 // bytes charged per slot
}

func newScratchQuota(limit int64) *scratchQuota {
	return &scratchQuota{limit: limit, slots: map[string]int64{}}
}

// charge takes n bytes for slot, or refuses with ErrNoSpace.
func (q *scratchQuota) charge(slot string, n int64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.used+n > q.limit {
		return fmt.Errorf("writable exports hold %d of their %d-byte quota: %w", q.used, q.limit, blockdev.ErrNoSpace)
	}
	q.used += n
	q.slots[slot] += n
	return nil
}

// release gives back everything slot took.
func (q *scratchQuota) release(slot string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.used -= q.slots[slot]
	delete(q.slots, slot)
}

// Used returns the bytes charged.
func (q *scratchQuota) Used() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.used
}

// quotaDevice charges each 4 KiB block the first time it is written. The
// set of written blocks is sparse (one 512-byte bitmap per 16 MiB written
// into), so its memory follows what was written, not the disk's size.
type quotaDevice struct {
	blockdev.Device
	q    *scratchQuota
	slot string

	mu      sync.Mutex
	written map[int64]*[64]uint64 // 4096 blocks per entry
}

func (q *scratchQuota) wrap(slot string, d blockdev.Device) *quotaDevice {
	return &quotaDevice{Device: d, q: q, slot: slot, written: map[int64]*[64]uint64{}}
}

func (d *quotaDevice) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if len(p) == 0 || off < 0 || off+int64(len(p)) > d.Size() {
		return d.Device.WriteAt(ctx, p, off)
	}
	first, last := off/blockdev.BlockSize, (off+int64(len(p))-1)/blockdev.BlockSize
	d.mu.Lock()
	var fresh []int64
	for b := first; b <= last; b++ {
		if m := d.written[b>>12]; m == nil || m[(b>>6)&63]&(1<<(b&63)) == 0 {
			fresh = append(fresh, b)
		}
	}
	if len(fresh) > 0 {
		if err := d.q.charge(d.slot, int64(len(fresh))*blockdev.BlockSize); err != nil {
			d.mu.Unlock()
			return 0, err
		}
		for _, b := range fresh {
			m := d.written[b>>12]
			if m == nil {
				m = new([64]uint64)
				d.written[b>>12] = m
			}
			m[(b>>6)&63] |= 1 << (b & 63)
		}
	}
	d.mu.Unlock()
	return d.Device.WriteAt(ctx, p, off)
}
