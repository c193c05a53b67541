package agent

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cbt"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// replicate is the stream's main loop: it does whatever work makes the
// stream write-ordered (initial copy, resync, bitmap drain), then sends the
// queue's changes as they come.
func (a *Agent) replicate(s *sender) error {
	hb := time.NewTicker(a.cfg.Heartbeat)
	defer hb.Stop()
	for {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		select {
		case cmd := <-a.cmds:
			if err := a.command(s, cmd); err != nil {
				return err
			}
			continue
		default:
		}
		idle, err := a.step(s)
		if err != nil {
			return err
		}
		if !idle {
			continue
		}
		if err := s.flush(); err != nil {
			return err
		}
		select {
		case <-a.tr.Notify():
		case cmd := <-a.cmds:
			err = a.command(s, cmd)
		case <-hb.C:
			err = s.heartbeat()
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
		if err != nil {
			return err
		}
	}
}

// step does one piece of the stream's work, the first that applies: the
// initial copy, a resync, a bitmap drain (also when a drain was left open
// and the bitmap is already empty: it must still end), a due scan, or the
// queue's next changes. It reports idle when there was nothing to do.
func (a *Agent) step(s *sender) (idle bool, err error) {
	switch {
	case a.deferred.Load():
		// Track what changes (a bitmap: bounded) and send nothing.
		a.tr.EnterBitmap()
		return true, nil
	case need(a.need.Load()) == needInitial:
		return false, a.initial(s)
	case need(a.need.Load()) == needResync:
		return false, a.resync(s)
	case a.drainOpen.Load() || a.tr.Stats().Mode == cbt.ModeBitmap:
		a.tr.EnterBitmap()
		return false, a.drain(s, ferryv1.DrainReason_DRAIN_REASON_OVERFLOW)
	case a.cfg.Mode == ModeScan && a.scanDue.Load():
		return false, a.scan(s)
	}
	changes := a.tr.Pop(int64(a.cfg.BatchBytes))
	if len(changes) == 0 {
		return true, nil
	}
	return false, a.sendChanges(s, changes)
}

// sendChanges sends popped changes in order. If the stream fails midway,
// what was not handed to the sender goes back to the front of the queue,
// so that no captured write is lost.
func (a *Agent) sendChanges(s *sender, changes []cbt.Change) error {
	for i, c := range changes {
		done, err := a.sendChange(s, c)
		if err != nil {
			rest := append([]cbt.Change(nil), changes[i:]...)
			if c.Mark == nil {
				rest[0].Off, rest[0].Data = c.Off+int64(done), c.Data[done:]
			}
			a.tr.Unpop(rest)
			return err
		}
	}
	return nil
}

// sendChange hands one change to the sender. It returns how many of its
// bytes the sender took (all, unless it fails).
func (a *Agent) sendChange(s *sender, c cbt.Change) (int, error) {
	if c.Mark != nil {
		if err := s.add(markerRecord(*c.Mark)); err != nil {
			return 0, err
		}
		a.lastMark = c.Mark.Time
		return 0, nil
	}
	for off := 0; off < len(c.Data); off += MaxWrite {
		data := c.Data[off:min(off+MaxWrite, len(c.Data))]
		if err := s.add(writeRecord(c.Disk, c.Off+int64(off), data)); err != nil {
			return off, err
		}
	}
	return len(c.Data), nil
}

// beginDrain opens a drain on the stream if none is open.
func (a *Agent) beginDrain(s *sender, reason ferryv1.DrainReason) error {
	if a.drainOpen.Load() {
		return nil
	}
	a.drainOpen.Store(true)
	return s.add(drainRecord(true, reason))
}

// drain sends the current content of every dirty block until the bitmap is
// empty, then closes the drain and cuts a crash-consistent point: at the
// moment the bitmap was found empty every block sent held the disk's
// content, so the cut is a real state of the disks.
func (a *Agent) drain(s *sender, reason ferryv1.DrainReason) error {
	if err := a.beginDrain(s, reason); err != nil {
		return err
	}
	total := max(a.tr.Stats().DirtyBlocks, 1)
	done := int64(0)
	hb := time.Now()
	for {
		disk, off, length, ok := a.tr.TakeDirty(MaxWrite)
		if !ok {
			if err := s.flush(); err != nil {
				return err
			}
			if !a.tr.FinishDrain() {
				continue
			}
			break
		}
		// Each record owns its data: it stays in the window until acked.
		buf := make([]byte, length)
		if _, err := a.cfg.Disks[disk].Device.ReadAt(s.ctx, buf, off); err != nil {
			a.tr.MarkDirty(disk, off, length)
			return fmt.Errorf("%w: read disk %s at %d: %w", errFatal, a.cfg.Disks[disk].Name, off, err)
		}
		if err := s.add(writeRecord(disk, off, buf)); err != nil {
			a.tr.MarkDirty(disk, off, length)
			return err
		}
		done += length / blockdev.BlockSize
		if reason != ferryv1.DrainReason_DRAIN_REASON_INITIAL && reason != ferryv1.DrainReason_DRAIN_REASON_SCAN {
			a.setProgress(min(1, float64(done)/float64(total)))
		}
		if time.Since(hb) > a.cfg.Heartbeat {
			hb = time.Now()
			if err := s.heartbeat(); err != nil {
				return err
			}
		}
	}
	if err := s.add(drainRecord(false, reason)); err != nil {
		return err
	}
	a.drainOpen.Store(false)
	a.lastMark = a.cfg.Clock.Now()
	if err := s.add(markerRecord(cbt.MarkRequest{Tag: "drain-end", Time: a.lastMark})); err != nil {
		return err
	}
	a.setProgress(nan())
	a.log.Info("drain finished", "reason", reason.String(), "blocks", done)
	if err := s.flush(); err != nil {
		return err
	}
	// The receiver learns at once that no copy runs any more.
	return s.heartbeat()
}

// initial copies every disk once, skipping all-zero blocks (the empty
// replica already holds zeros) and the holes of sparse files. Writes made
// meanwhile are tracked in the bitmap and drained at the end.
func (a *Agent) initial(s *sender) error {
	a.tr.EnterBitmap()
	if err := a.beginDrain(s, ferryv1.DrainReason_DRAIN_REASON_INITIAL); err != nil {
		return err
	}
	var total, before int64
	for i, d := range a.cfg.Disks {
		total += d.Device.Size()
		if i < a.sweepDisk {
			before += d.Device.Size()
		}
	}
	hb := time.Now()
	for ; a.sweepDisk < len(a.cfg.Disks); a.sweepDisk, a.sweepOff = a.sweepDisk+1, 0 {
		i := a.sweepDisk
		dev := a.cfg.Disks[i].Device
		if a.cfg.Mode == ModeScan && a.scanTable[i] == nil {
			a.scanTable[i] = zeroTable(dev.Size())
		}
		err := extents(s.ctx, dev, func(off, length int64) error {
			for pos := max(off, a.sweepOff); pos < off+length; {
				n := min(int64(MaxWrite), off+length-pos)
				buf := make([]byte, n)
				if _, err := dev.ReadAt(s.ctx, buf, pos); err != nil {
					return fmt.Errorf("%w: read disk %s at %d: %w", errFatal, a.cfg.Disks[i].Name, pos, err)
				}
				if a.cfg.Mode == ModeScan {
					hashChunks(a.scanTable[i], buf, pos)
				}
				if err := a.sendNonZero(s, i, pos, buf); err != nil {
					return err
				}
				pos += n
				a.sweepOff = pos
				a.setProgress(float64(before+pos) / float64(total))
				if time.Since(hb) > a.cfg.Heartbeat {
					hb = time.Now()
					if err := s.heartbeat(); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		before += dev.Size()
	}
	a.need.Store(int32(needNone))
	a.scanDue.Store(false)
	a.log.Info("initial copy finished; draining changes made meanwhile")
	return a.drain(s, ferryv1.DrainReason_DRAIN_REASON_INITIAL)
}

// sendNonZero sends the runs of non-zero blocks of buf, read at off.
func (a *Agent) sendNonZero(s *sender, disk int, off int64, buf []byte) error {
	const bs = blockdev.BlockSize
	for i := 0; i < len(buf); {
		if blockdev.IsZero(buf[i:min(i+bs, len(buf))]) {
			i += bs
			continue
		}
		j := i + bs
		for j < len(buf) && !blockdev.IsZero(buf[j:min(j+bs, len(buf))]) {
			j += bs
		}
		if err := s.add(writeRecord(disk, off+int64(i), buf[i:min(j, len(buf))])); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// resync compares every chunk's hash with the receiver's replica and sends
// the chunks that differ: after a crash of the agent, a lost bitmap, or a
// receiver that does not hold what it acknowledged.
func (a *Agent) resync(s *sender) error {
	a.tr.EnterBitmap()
	if err := a.beginDrain(s, ferryv1.DrainReason_DRAIN_REASON_RESYNC); err != nil {
		return err
	}
	if err := s.flush(); err != nil {
		return err
	}
	client := ferryv1.NewReplicationClient(a.client())
	var differ, blocks, chunks int64
	for i, d := range a.cfg.Disks {
		remote, err := fetchHashes(s.ctx, client, a.cfg.VM, d.Name, a.cfg.Epoch, ChunkSize, d.Device.Size(), nil, true)
		if err != nil {
			return fmt.Errorf("resync disk %s: %w", d.Name, err)
		}
		a.hashBytes.Add(int64(len(remote)) * 8)
		local, err := a.hashDisk(s.ctx, i, func(p float64) { a.setProgress(p / 2) })
		if err != nil {
			return fmt.Errorf("%w: resync disk %s: %w", errFatal, d.Name, err)
		}
		// Second level: the 4 KiB blocks of the chunks that differ, so that
		// only blocks that differ are sent.
		var want []uint64
		for c := range local {
			if local[c] != remote[c] {
				differ++
				for b := int64(c) * ChunkSize / blockdev.BlockSize; b < min(int64(c+1)*ChunkSize, d.Device.Size())/blockdev.BlockSize; b++ {
					want = append(want, uint64(b))
				}
			}
		}
		for len(want) > 0 {
			part := want[:min(len(want), 1<<16)]
			want = want[len(part):]
			rb, err := fetchHashes(s.ctx, client, a.cfg.VM, d.Name, a.cfg.Epoch, blockdev.BlockSize, d.Device.Size(), part, false)
			if err != nil {
				return fmt.Errorf("resync disk %s: %w", d.Name, err)
			}
			a.hashBytes.Add(int64(len(rb)) * 8)
			buf := make([]byte, blockdev.BlockSize)
			for k, b := range part {
				if _, err := d.Device.ReadAt(s.ctx, buf, int64(b)*blockdev.BlockSize); err != nil {
					return fmt.Errorf("%w: resync disk %s: %w", errFatal, d.Name, err)
				}
				if xxhash.Sum64(buf) != rb[k] {
					a.tr.MarkDirty(i, int64(b)*blockdev.BlockSize, blockdev.BlockSize)
					blocks++
				}
			}
		}
		chunks += int64(len(local))
		if a.cfg.Mode == ModeScan {
			a.scanTable[i] = local
		}
	}
	a.log.Info("resync compared hashes", "chunks", chunks, "chunks_differ", differ, "blocks_differ", blocks)
	a.need.Store(int32(needNone))
	a.scanDue.Store(false)
	return a.drain(s, ferryv1.DrainReason_DRAIN_REASON_RESYNC)
}

// scan hashes every chunk, marks those that changed since the last pass
// dirty and drains them, then cuts a point (scan mode).
func (a *Agent) scan(s *sender) error {
	a.scanDue.Store(false)
	changed := int64(0)
	for i, d := range a.cfg.Disks {
		if a.scanTable[i] != nil && a.unchanged(i) {
			a.m.scanUnchanged.Inc()
			continue
		}
		local, err := a.hashDisk(s.ctx, i, nil)
		if err != nil {
			return fmt.Errorf("%w: scan disk %s: %w", errFatal, d.Name, err)
		}
		if a.scanTable[i] == nil {
			a.scanTable[i] = zeroTable(d.Device.Size())
		}
		for c := range local {
			if local[c] != a.scanTable[i][c] {
				a.tr.MarkDirty(i, int64(c)*ChunkSize, ChunkSize)
				changed++
			}
		}
		a.scanTable[i] = local
	}
	asked := a.checkpointDue.Swap(false)
	if changed == 0 {
		if every := time.Duration(a.crashEvery.Load()); asked || every > 0 && a.cfg.Clock.Now().Sub(a.lastMark) >= every {
			a.lastMark = a.cfg.Clock.Now()
			if err := s.add(markerRecord(cbt.MarkRequest{Tag: "scan", Time: a.lastMark})); err != nil {
				return err
			}
			return s.flush()
		}
		return nil
	}
	a.tr.EnterBitmap()
	return a.drain(s, ferryv1.DrainReason_DRAIN_REASON_SCAN)
}

// A chunk's hash is the fold of its 4 KiB blocks' sums (ferry.FoldSums):
// the receiver keeps block sums as writes arrive and folds them without
// reading its replica.

// zeroChunkHash is the hash of n bytes of zeros.
func zeroChunkHash(n int64) uint64 {
	return chunkHash(make([]byte, n), nil)
}

// chunkHash is the hash of one chunk's bytes; sums is scratch space.
func chunkHash(p []byte, sums []uint64) uint64 {
	return ferry.FoldSums(ferry.BlockSums(sums[:0], p))
}

func zeroTable(size int64) []uint64 {
	n := (size + ChunkSize - 1) / ChunkSize
	t := make([]uint64, n)
	full := zeroChunkHash(ChunkSize)
	for i := range t {
		t[i] = full
	}
	t[n-1] = zeroChunkHash(size - (n-1)*ChunkSize)
	return t
}

// hashChunks sets the table's entries for the whole chunks in buf, read at
// off (a multiple of ChunkSize).
func hashChunks(table []uint64, buf []byte, off int64) {
	sums := make([]uint64, 0, ChunkSize/blockdev.BlockSize)
	for i := 0; i < len(buf); i += ChunkSize {
		table[(off+int64(i))/ChunkSize] = chunkHash(buf[i:min(i+ChunkSize, len(buf))], sums)
	}
}

// diskVersion is a file disk's version and whether it had settled when
// read.
type diskVersion struct {
	v       blockdev.Version
	settled bool
}

// versionMargin is how long after a file's last change its version is
// trusted to move with the next write: well above any file system's
// timestamp granularity.
const versionMargin = time.Second

// unchanged reports whether disk i is a file whose version is the one read
// before its last hashing, settled then: no write since, so no need to read
// it again.
func (a *Agent) unchanged(i int) bool {
	was := a.scanVersion[i]
	if was == nil || !was.settled {
		return false
	}
	vd, ok := a.cfg.Disks[i].Device.(blockdev.Versioned)
	if !ok {
		return false
	}
	v, ok, err := vd.Version()
	return err == nil && ok && v == was.v
}

// hashDisk reads disk i, at most at the configured scan rate, and returns
// the hash of every chunk; the disk's version read before it is kept for
// the next scan pass.
func (a *Agent) hashDisk(ctx context.Context, i int, progress func(float64)) ([]uint64, error) {
	a.scanVersion[i] = nil
	var before *diskVersion
	if vd, ok := a.cfg.Disks[i].Device.(blockdev.Versioned); ok {
		if v, ok, err := vd.Version(); err == nil && ok {
			now := time.Now()
			before = &diskVersion{v: v, settled: v.Settled(now, versionMargin)}
		}
	}
	t, err := localHashes(ctx, a.cfg.Disks[i].Device, a.pace(ctx), progress)
	if err != nil {
		return nil, err
	}
	a.scanVersion[i] = before
	return t, nil
}

// pace returns what localHashes calls after each read: it counts the bytes
// and, with a scan rate set, sleeps so that reading stays under it.
func (a *Agent) pace(ctx context.Context) func(n int) error {
	start, total := time.Now(), int64(0)
	return func(n int) error {
		a.m.hashReadBytes.Add(float64(n))
		total += int64(n)
		if a.cfg.ScanRate <= 0 {
			return nil
		}
		due := time.Duration(float64(total) / float64(a.cfg.ScanRate) * float64(time.Second))
		if wait := due - time.Since(start); wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
}

// localHashes reads a disk and returns the hash of every chunk; holes of a
// sparse file are not read. read is called after each read with its size.
func localHashes(ctx context.Context, dev blockdev.Device, read func(n int) error, progress func(float64)) ([]uint64, error) {
	t := zeroTable(dev.Size())
	buf := make([]byte, 4<<20)
	err := extents(ctx, dev, func(off, length int64) error {
		// Extents from the file system need not be chunk aligned.
		start := off / ChunkSize * ChunkSize
		end := min((off+length+ChunkSize-1)/ChunkSize*ChunkSize, dev.Size())
		for pos := start; pos < end; pos += int64(len(buf)) {
			n := min(int64(len(buf)), end-pos)
			if _, err := dev.ReadAt(ctx, buf[:n], pos); err != nil {
				return err
			}
			if err := read(int(n)); err != nil {
				return err
			}
			hashChunks(t, buf[:n], pos)
			if progress != nil {
				progress(float64(pos+n) / float64(dev.Size()))
			}
		}
		return nil
	})
	return t, err
}

// extents calls fn for the ranges of dev that may hold data, chunk aligned.
func extents(ctx context.Context, dev blockdev.Device, fn func(off, length int64) error) error {
	ex, ok := dev.(blockdev.Extents)
	if !ok {
		return fn(0, dev.Size())
	}
	var pending [2]int64
	has := false
	err := ex.DataExtents(ctx, func(off, length int64) error {
		s := off / ChunkSize * ChunkSize
		e := min((off+length+ChunkSize-1)/ChunkSize*ChunkSize, dev.Size())
		if has && s <= pending[1] {
			pending[1] = max(pending[1], e)
			return nil
		}
		if has {
			if err := fn(pending[0], pending[1]-pending[0]); err != nil {
				return err
			}
		}
		pending, has = [2]int64{s, e}, true
		return nil
	})
	if err != nil {
		return err
	}
	if has {
		return fn(pending[0], pending[1]-pending[0])
	}
	return nil
}

// fetchHashes asks the receiver for the hashes of a disk's chunks of
// chunkSize: all of them, or those listed in only (in that order); folded
// from block sums (the agent's chunk hash) or of the bytes (a block's sum).
func fetchHashes(ctx context.Context, client ferryv1.ReplicationClient, vm, disk string, epoch uint64, chunkSize int64, size int64, only []uint64, fold bool) ([]uint64, error) {
	stream, err := client.BlockHashes(ctx, &ferryv1.BlockHashesRequest{Vm: vm, Disk: disk, ChunkSize: uint32(chunkSize), Epoch: epoch, Chunks: only,
		FoldBlockHashes: fold})
	if err != nil {
		return nil, err
	}
	n := len(only)
	if only == nil {
		n = int((size + chunkSize - 1) / chunkSize)
	}
	out := make([]uint64, n)
	got := 0
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		first := int(msg.GetFirstChunk())
		if first+len(msg.GetHashes()) > len(out) {
			return nil, fmt.Errorf("receiver sent %d hashes, %d were asked for", first+len(msg.GetHashes()), len(out))
		}
		copy(out[first:], msg.GetHashes())
		got += len(msg.GetHashes())
	}
	if got != len(out) {
		return nil, fmt.Errorf("receiver sent %d hashes, %d were asked for", got, len(out))
	}
	return out, nil
}

// command carries out a receiver's command and answers it on the stream.
func (a *Agent) command(s *sender, cmd *ferryv1.Command) error {
	res := &ferryv1.CommandResult{Id: cmd.GetId()}
	switch {
	case cmd.GetPolicy() != nil:
		a.setPolicy(cmd.GetPolicy())
		res.Ok = true
	case cmd.GetHold() != nil:
		if err := a.holdGroup(s.ctx, cmd.GetHold()); err != nil {
			res.Error = err.Error()
		} else {
			res.Ok = true
		}
	case cmd.GetResync() != nil:
		if err := a.resyncRanges(cmd.GetResync().GetRanges()); err != nil {
			res.Error = err.Error()
		} else {
			res.Ok = true
		}
	case cmd.GetCheckpoint() != nil:
		if a.cfg.Mode == ModeScan {
			a.checkpointDue.Store(true) // the next pass cuts a point, changes or not
			a.scanDue.Store(true)
			res.Ok = true
		} else if a.Mark(false, cmd.GetCheckpoint().GetTag()) {
			res.Ok = true
		} else {
			res.Error = "no point can be cut now (the agent is draining its bitmap or its queue is full)"
		}
	case cmd.GetCut() != nil:
		held, err := a.cutGroup(cmd.GetCut())
		res.HoldNanos = int64(held)
		if err != nil {
			res.Error = err.Error()
		} else {
			res.Ok = true
		}
	case cmd.GetShutdown() == nil:
		res.Error = fmt.Sprintf("unknown command %T", cmd.GetAction())
	case a.cfg.ShutdownMachine == nil:
		res.Error = "this agent has no way to shut its machine down (no shutdown hook configured)"
	default:
		if err := a.cfg.ShutdownMachine(s.ctx); err != nil {
			res.Error = fmt.Sprintf("the machine did not shut down: %v", err)
			break
		}
		if cmd.GetShutdown().GetFullCopy() {
			// No checksums: every block of every disk goes again.
			a.deferred.Store(false)
			a.tr.EnterBitmap()
			a.tr.MarkAllDirty()
		}
		seq, err := a.finalMarker(s, cmd.GetShutdown().GetTag())
		if err != nil {
			return err
		}
		res.Ok, res.FinalSeq = true, seq
		a.log.Info("machine shut down; final marker sent", "seq", seq)
	}
	if res.Error != "" {
		a.log.Warn("command failed", "err", res.Error)
	}
	return s.stream.Send(&ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Result{Result: res}})
}

// finalMarker sends everything the stopped machine wrote and cuts a last
// marker after it, tagged tag ("shutdown" when empty). It returns the
// marker's sequence.
func (a *Agent) finalMarker(s *sender, tag string) (uint64, error) {
	if tag == "" {
		tag = "shutdown"
	}
	if a.cfg.Mode == ModeScan {
		a.scanDue.Store(true)
	}
	for {
		idle, err := a.step(s)
		if err != nil {
			return 0, err
		}
		if idle {
			a.lastMark = a.cfg.Clock.Now()
			if err := s.add(markerRecord(cbt.MarkRequest{Tag: tag, Time: a.lastMark})); err != nil {
				return 0, err
			}
			seq := a.nextSeq - 1
			return seq, s.flush()
		}
	}
}
