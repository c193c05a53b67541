package cbt_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/blockdevtest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cbt"
)

const bs = blockdev.BlockSize

func TestBitmapRunsAndPersistence(t *testing.T) {
	b := cbt.NewBitmap(1<<20, bs) // 256 blocks
	b.SetRange(0, 1)              // block 0
	b.SetRange(10*bs, 3*bs)       // blocks 10-12
	b.SetRange(255*bs, bs)        // last block
	b.SetRange(10*bs+1, 10)       // inside block 10 again
	if b.Count() != 5 {
		t.Fatalf("count %d, want 5", b.Count())
	}
	path := filepath.Join(t.TempDir(), "bm")
	if err := b.Save(path); err != nil {
		t.Fatal(err)
	}
	var runs [][2]int64
	for {
		first, n := b.TakeRun(2)
		if n == 0 {
			break
		}
		runs = append(runs, [2]int64{first, n})
	}
	want := [][2]int64{{0, 1}, {10, 2}, {12, 1}, {255, 1}}
	if len(runs) != len(want) {
		t.Fatalf("runs %v, want %v", runs, want)
	}
	for i := range want {
		if runs[i] != want[i] {
			t.Fatalf("runs %v, want %v", runs, want)
		}
	}
	loaded, err := cbt.LoadBitmap(path, 1<<20, bs)
	if err != nil || loaded.Count() != 5 || !loaded.IsSet(11) || loaded.IsSet(13) {
		t.Fatalf("loaded bitmap: count %d, %v", loaded.Count(), err)
	}
	// Merging counts only blocks not already dirty.
	m := cbt.NewBitmap(1<<20, bs)
	m.SetRange(11*bs, 5*bs) // blocks 11-15: 11 and 12 overlap
	m.Merge(loaded)
	if m.Count() != 8 || !m.IsSet(0) || !m.IsSet(15) || !m.IsSet(255) {
		t.Fatalf("merged bitmap: count %d, want 8", m.Count())
	}
	// A flipped bit is caught by the checksum; another geometry is refused.
	raw, _ := os.ReadFile(path)
	raw[30] ^= 1
	os.WriteFile(path, raw, 0o600)
	if _, err := cbt.LoadBitmap(path, 1<<20, bs); !errors.Is(err, cbt.ErrCorruptBitmap) {
		t.Fatalf("corrupt bitmap loaded: %v", err)
	}
	b.Save(path)
	if _, err := cbt.LoadBitmap(path, 2<<20, bs); !errors.Is(err, cbt.ErrCorruptBitmap) {
		t.Fatalf("bitmap of another size loaded: %v", err)
	}
}

func TestTrackerOrderAndOverflow(t *testing.T) {
	ctx := context.Background()
	d0, d1 := blockdev.NewMemory(1<<20), blockdev.NewMemory(1<<20)
	tr := cbt.NewTracker([]blockdev.Device{d0, d1}, 3*(bs+64)+64)
	w := func(disk int, off int64, b byte) {
		t.Helper()
		if _, err := tr.Device(disk).WriteAt(ctx, bytes.Repeat([]byte{b}, bs), off); err != nil {
			t.Fatal(err)
		}
	}
	w(0, 0, 1)
	w(1, bs, 2)
	if !tr.Mark(cbt.MarkRequest{Tag: "a"}) {
		t.Fatal("mark refused")
	}
	got := tr.Pop(1 << 20)
	if len(got) != 3 || got[0].Disk != 0 || got[1].Disk != 1 || got[1].Off != bs || got[2].Mark == nil || got[2].Mark.Tag != "a" {
		t.Fatalf("queue order wrong: %+v", got)
	}
	// The splitter wrote through.
	buf := make([]byte, bs)
	d1.ReadAt(ctx, buf, bs)
	if buf[0] != 2 {
		t.Fatal("write did not reach the disk")
	}
	// Unaligned writes are refused before touching the disk.
	if _, err := tr.Device(0).WriteAt(ctx, []byte{1}, 0); err == nil {
		t.Fatal("unaligned write accepted")
	}
	// Four writes overflow a queue of three: all go to the bitmap.
	for i := 0; i < 4; i++ {
		w(0, int64(i+8)*bs, 3)
	}
	st := tr.Stats()
	if st.Mode != cbt.ModeBitmap || st.QueueLen != 0 || st.DirtyBlocks != 4 || st.Overflows != 1 {
		t.Fatalf("after overflow: %+v", st)
	}
	if tr.Mark(cbt.MarkRequest{}) {
		t.Fatal("mark accepted in bitmap mode")
	}
	if tr.FinishDrain() {
		t.Fatal("drain finished with dirty blocks")
	}
	disk, off, n, ok := tr.TakeDirty(1 << 20)
	if !ok || disk != 0 || off != 8*bs || n != 4*bs {
		t.Fatalf("take dirty: disk %d off %d n %d ok %v", disk, off, n, ok)
	}
	// A write landing after the take marks the block dirty again.
	w(0, 9*bs, 4)
	if tr.FinishDrain() {
		t.Fatal("drain finished although a block was written meanwhile")
	}
	if _, off, n, _ := tr.TakeDirty(1 << 20); off != 9*bs || n != bs {
		t.Fatalf("second take: off %d n %d", off, n)
	}
	if !tr.FinishDrain() || tr.Stats().Mode != cbt.ModeQueue {
		t.Fatal("drain did not finish on an empty bitmap")
	}
	// Bitmaps survive a save and load, and loading switches to bitmap mode.
	tr.MarkDirty(1, 0, 3*bs)
	dir := t.TempDir()
	path := func(i int) string { return filepath.Join(dir, string(rune('a'+i))) }
	if err := tr.SaveBitmaps(path); err != nil {
		t.Fatal(err)
	}
	tr2 := cbt.NewTracker([]blockdev.Device{d0, d1}, 1<<20)
	if err := tr2.LoadBitmaps(path); err != nil {
		t.Fatal(err)
	}
	if st := tr2.Stats(); st.Mode != cbt.ModeBitmap || st.DirtyBlocks != 3 {
		t.Fatalf("after load: %+v", st)
	}
}

// TestUnpopKeepsOrder: changes handed back go in front of what was queued
// since, in their order; in bitmap mode they become dirty blocks.
func TestUnpopKeepsOrder(t *testing.T) {
	ctx := context.Background()
	tr := cbt.NewTracker([]blockdev.Device{blockdev.NewMemory(1 << 20)}, 1<<20)
	for i := 0; i < 3; i++ {
		tr.Device(0).WriteAt(ctx, bytes.Repeat([]byte{byte(i)}, bs), int64(i)*bs)
	}
	got := tr.Pop(1 << 20)
	tr.Device(0).WriteAt(ctx, bytes.Repeat([]byte{9}, bs), 9*bs)
	tr.Unpop(got[1:])
	again := tr.Pop(1 << 20)
	if len(again) != 3 || again[0].Off != bs || again[1].Off != 2*bs || again[2].Off != 9*bs {
		t.Fatalf("order after unpop: %+v", again)
	}
	tr.EnterBitmap()
	tr.Unpop(again)
	if st := tr.Stats(); st.DirtyBlocks != 3 || st.QueueLen != 0 {
		t.Fatalf("unpop in bitmap mode: %+v", st)
	}
}

// TestHoldBlocksWrites: while a group barrier holds the tracker, a write
// waits; a marker queued during the hold lands before it.
func TestHoldBlocksWrites(t *testing.T) {
	ctx := context.Background()
	tr := cbt.NewTracker([]blockdev.Device{blockdev.NewMemory(1 << 20)}, 1<<20)
	dev := tr.Device(0)
	tr.Hold()
	wrote := make(chan error, 1)
	go func() {
		_, err := dev.WriteAt(ctx, make([]byte, 4096), 0)
		wrote <- err
	}()
	select {
	case <-wrote:
		t.Fatal("a write went through a held tracker")
	case <-time.After(50 * time.Millisecond):
	}
	if !tr.Mark(cbt.MarkRequest{Tag: "group/g/1"}) {
		t.Fatal("no marker during the hold")
	}
	tr.Release()
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	got := tr.Pop(1 << 20)
	if len(got) != 2 || got[0].Mark == nil || got[0].Mark.Tag != "group/g/1" || got[1].Mark != nil {
		t.Fatalf("queue after the hold: %+v", got)
	}
}

// gatedDevice holds the first write inside WriteAt until released and
// notes whether another write entered meanwhile; it can also fail writes.
type gatedDevice struct {
	*blockdev.Memory
	mu       sync.Mutex
	inside   int
	overlap  chan struct{}
	entered  chan struct{}
	release  chan struct{}
	fail     error
	gateNext bool
}

func (g *gatedDevice) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	g.mu.Lock()
	if g.fail != nil {
		g.mu.Unlock()
		return 0, g.fail
	}
	g.inside++
	if g.inside > 1 {
		close(g.overlap)
	}
	gate := g.gateNext
	g.gateNext = false
	g.mu.Unlock()
	if gate {
		close(g.entered)
		<-g.release
	}
	n, err := g.Memory.WriteAt(ctx, p, off)
	g.mu.Lock()
	g.inside--
	g.mu.Unlock()
	return n, err
}

// TestSplitterOrdersWrites: the splitter applies a write to the local disk
// and queues it under one lock, so two writes to the same block reach the
// disk and the queue in the same order (the replica ends as the disk
// does), and a write the disk refused is not queued.
func TestSplitterOrdersWrites(t *testing.T) {
	ctx := context.Background()
	dev := &gatedDevice{Memory: blockdev.NewMemory(1 << 20), overlap: make(chan struct{}), entered: make(chan struct{}), release: make(chan struct{}), gateNext: true}
	tr := cbt.NewTracker([]blockdev.Device{dev}, 1<<20)
	done := make(chan error, 2)
	go func() {
		_, err := tr.Device(0).WriteAt(ctx, bytes.Repeat([]byte{'A'}, bs), 0)
		done <- err
	}()
	<-dev.entered
	go func() {
		_, err := tr.Device(0).WriteAt(ctx, bytes.Repeat([]byte{'B'}, bs), 0)
		done <- err
	}()
	select {
	case <-dev.overlap:
		t.Fatal("a second write reached the disk while the first was being applied: the queue's order and the disk's can differ")
	case <-time.After(100 * time.Millisecond):
	}
	close(dev.release)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	got := tr.Pop(1 << 20)
	disk := make([]byte, bs)
	dev.ReadAt(ctx, disk, 0)
	if len(got) != 2 || !bytes.Equal(got[1].Data, disk) {
		t.Fatalf("queue %d changes; the last queued write and the disk differ (disk holds %q)", len(got), disk[:1])
	}
	dev.fail = errors.New("medium error")
	if _, err := tr.Device(0).WriteAt(ctx, bytes.Repeat([]byte{'C'}, bs), bs); !errors.Is(err, dev.fail) {
		t.Fatalf("write to a failing disk: %v", err)
	}
	if st := tr.Stats(); st.QueueLen != 0 || st.DirtyBlocks != 0 {
		t.Fatalf("a write the disk refused was tracked: %+v", st)
	}
}

// TestSplitterContract: the write splitter is a Device that takes whole
// blocks only.
func TestSplitterContract(t *testing.T) {
	blockdevtest.Run(t, blockdevtest.Options{Aligned: true}, func(t *testing.T) blockdev.Device {
		return cbt.NewTracker([]blockdev.Device{blockdev.NewMemory(blockdevtest.Size)}, 64<<20).Device(0)
	})
}
