package ingest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// session is one open stream of one VM.
type session struct {
	name     ferry.VMID
	ctx      context.Context
	cancel   context.CancelFunc
	released chan struct{}

	// Owned by the receiving goroutine.
	vm         journal.VM
	next       uint64 // sequence the next record must carry
	consistent bool
	fifo       chan *job

	durable atomic.Uint64
	// received is the last sequence received and checked (next-1), for
	// readers outside the receiving goroutine.
	received atomic.Uint64
	notify   chan struct{} // to sendAcks: durable moved
	// durableCh is closed, and replaced, each time durable moves: every
	// waiter wakes (waitDurable).
	durableMu sync.Mutex
	durableCh chan struct{}

	cmds    chan *ferryv1.Command
	cmdMu   sync.Mutex
	cmdID   uint64
	results map[uint64]chan *ferryv1.CommandResult

	errOnce sync.Once
	err     error
}

func newSession(parent context.Context, vm ferry.VMID) *session {
	ctx, cancel := context.WithCancel(parent)
	return &session{name: vm, ctx: ctx, cancel: cancel, released: make(chan struct{}), notify: make(chan struct{}, 1), durableCh: make(chan struct{}),
		cmds: make(chan *ferryv1.Command), results: map[uint64]chan *ferryv1.CommandResult{}}
}

// fail ends the session with err (the first error wins).
func (s *session) fail(err error) {
	s.errOnce.Do(func() { s.err = err })
	s.cancel()
}

// failure returns the error that ended the session, or nil; going through
// the Once it waits for a fail racing with it (Close's) and settles the
// outcome: a later fail records nothing.
func (s *session) failure() error {
	s.errOnce.Do(func() {})
	return s.err
}

func (s *session) setDurable(seq uint64) {
	s.durable.Store(seq)
	s.durableMu.Lock()
	close(s.durableCh)
	s.durableCh = make(chan struct{})
	s.durableMu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// sendAcks is the only goroutine that sends on the stream after the hello.
func (s *session) sendAcks(stream ferryv1.Replication_ReplicateServer) {
	var sent uint64
	for {
		select {
		case <-s.notify:
		case cmd := <-s.cmds:
			if err := stream.Send(&ferryv1.ServerMessage{Msg: &ferryv1.ServerMessage_Command{Command: cmd}}); err != nil {
				s.fail(err)
				return
			}
			continue
		case <-s.ctx.Done():
			return
		}
		if d := s.durable.Load(); d > sent {
			if err := stream.Send(&ferryv1.ServerMessage{Msg: &ferryv1.ServerMessage_Ack{Ack: &ferryv1.Ack{DurableSeq: d}}}); err != nil {
				s.fail(err)
				return
			}
			sent = d
		}
	}
}

// job is one batch on its way through verification and compression.
type job struct {
	sess *session
	// held is the batch's share of the receiver's budget, released when
	// the batch is committed or dropped.
	held *held
	in   []*ferryv1.Record
	out  []journal.Record
	bufs []*[]byte
	size int
	recv time.Time
	err  error
	done chan struct{}
}

// receive reads batches, checks the stream rules in order and hands each
// batch to the workers and, in order, to the forwarder. It returns io.EOF
// when the agent closes its side.
func (r *Receiver) receive(s *session, stream ferryv1.Replication_ReplicateServer) error {
	defer close(s.fifo)
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		c := r.counters(s.name)
		c.seen.Store(time.Now().UnixNano())
		switch m := msg.GetMsg().(type) {
		case *ferryv1.AgentMessage_Heartbeat:
			r.progressed(s.name, c, m.Heartbeat)
		case *ferryv1.AgentMessage_Batch:
			j, err := r.check(s, m.Batch)
			if err != nil {
				r.m.rejected.WithLabelValues(rejectReason(err)).Inc()
				return err
			}
			r.m.receivedBytes.WithLabelValues(string(s.name)).Add(float64(j.size))
			r.counters(s.name).received.Add(int64(j.size))
			if err := r.budget.acquire(s.ctx, int64(j.size)); err != nil {
				return err
			}
			j.held = &held{b: r.budget, n: int64(j.size)}
			select {
			case s.fifo <- j:
			case <-s.ctx.Done():
				j.held.release()
				return s.ctx.Err()
			}
			select {
			case r.jobs <- j:
			case <-s.ctx.Done():
				return s.ctx.Err()
			}
		case *ferryv1.AgentMessage_Result:
			s.cmdMu.Lock()
			ch := s.results[m.Result.GetId()]
			delete(s.results, m.Result.GetId())
			s.cmdMu.Unlock()
			if ch == nil {
				return &RecordError{VM: string(s.name), Seq: s.next, Err: ErrBadRecord, Msg: fmt.Sprintf("result for unknown command %d", m.Result.GetId())}
			}
			ch <- m.Result
		case *ferryv1.AgentMessage_Hello:
			return &RecordError{VM: string(s.name), Seq: s.next, Err: ErrBadRecord, Msg: "a second hello on an open stream"}
		default:
			return &RecordError{VM: string(s.name), Seq: s.next, Err: ErrBadRecord, Msg: "empty message"}
		}
	}
}

// progressed records the progress of a copy a heartbeat reports; a
// heartbeat without one ends the copy: its gauge goes away.
func (r *Receiver) progressed(vm ferry.VMID, c *vmCounters, hb *ferryv1.Heartbeat) {
	if hb.ResyncProgress == nil {
		if c.progress.Swap(0) != 0 {
			r.m.resyncProgress.DeleteLabelValues(string(vm))
		}
		c.copy.Store(nil)
		return
	}
	p := min(max(hb.GetResyncProgress(), 0), 1)
	r.m.resyncProgress.WithLabelValues(string(vm)).Set(p)
	c.progress.Store(math.Float64bits(max(p, 1e-9)))
	if c.copy.Load() == nil {
		c.copy.Store(&copyStart{at: r.cfg.Clock.Now(), progress: p, received: c.received.Load()})
	}
}

func rejectReason(err error) string {
	switch {
	case errors.Is(err, ErrChecksum), errors.Is(err, ErrTransit):
		return "checksum"
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	case errors.Is(err, ErrBadRecord):
		return "record"
	}
	return "other"
}

// check applies the stream's rules to every record of a batch. It changes
// the session's sequence and drain state only when the whole batch passes.
func (r *Receiver) check(s *session, b *ferryv1.Batch) (*job, error) {
	recs := b.GetRecords()
	next, consistent := s.next, s.consistent
	bad := func(seq uint64, err error, format string, args ...any) error {
		return &RecordError{VM: string(s.name), Seq: seq, Err: err, Msg: fmt.Sprintf(format, args...)}
	}
	if len(recs) == 0 {
		return nil, bad(next, ErrBadRecord, "empty batch")
	}
	// The checks come first: a record damaged in transit is sent again,
	// not judged by the rules.
	for _, rec := range recs {
		switch c := rec.GetCheck(); {
		case c == 0:
			return nil, bad(rec.GetSeq(), ErrBadRecord, "record without a check")
		case c != wire.RecordCheck(rec):
			return nil, bad(rec.GetSeq(), ErrTransit, "record %d fails its check: damaged in transit", rec.GetSeq())
		}
	}
	size := 0
	for _, rec := range recs {
		seq := rec.GetSeq()
		if seq != next {
			return nil, bad(seq, ErrBadRecord, "sequence %d does not follow %d (expected %d)", seq, next-1, next)
		}
		next++
		switch body := rec.GetBody().(type) {
		case *ferryv1.Record_Write:
			w := body.Write
			if int(w.GetDisk()) >= len(s.vm.Disks) {
				return nil, bad(seq, ErrBadRecord, "unknown disk index %d (the VM has %d disks)", w.GetDisk(), len(s.vm.Disks))
			}
			d := s.vm.Disks[w.GetDisk()]
			off, n := w.GetOffset(), uint64(w.GetLength())
			switch {
			case off%blockdev.BlockSize != 0:
				return nil, bad(seq, ErrBadRecord, "disk %s: offset %d is not aligned to %d-byte blocks", d.Name, off, blockdev.BlockSize)
			case n == 0 || n%blockdev.BlockSize != 0:
				return nil, bad(seq, ErrBadRecord, "disk %s: length %d is not a positive multiple of %d", d.Name, n, blockdev.BlockSize)
			case n > uint64(r.cfg.MaxWriteBytes):
				return nil, bad(seq, ErrTooLarge, "disk %s: write of %d bytes exceeds the limit of %d", d.Name, n, r.cfg.MaxWriteBytes)
			case off > uint64(d.Size) || n > uint64(d.Size)-off:
				return nil, bad(seq, ErrBadRecord, "disk %s: %d bytes at offset %d run past the end of the %d-byte disk", d.Name, n, off, d.Size)
			case w.GetZero() && len(w.GetData()) != 0:
				return nil, bad(seq, ErrBadRecord, "disk %s: zero write carries %d bytes of data", d.Name, len(w.GetData()))
			case !w.GetZero() && uint64(len(w.GetData())) != n:
				return nil, bad(seq, ErrBadRecord, "disk %s: length says %d bytes, data has %d", d.Name, n, len(w.GetData()))
			}
			size += len(w.GetData())
			if size > r.cfg.MaxBatchBytes {
				return nil, bad(seq, ErrTooLarge, "batch data exceeds the limit of %d bytes", r.cfg.MaxBatchBytes)
			}
		case *ferryv1.Record_Marker:
			if _, ok := wire.Consistency(body.Marker.GetConsistency()); !ok {
				return nil, bad(seq, ErrBadRecord, "marker of unknown consistency %v", body.Marker.GetConsistency())
			}
			if !consistent {
				return nil, bad(seq, ErrBadRecord, "marker inside a drain: the replica is not write-ordered until the drain ends")
			}
			tag := body.Marker.GetTag()
			if err := ferry.CheckTag(tag); err != nil {
				return nil, bad(seq, ErrBadRecord, "marker %v", err)
			}

		case *ferryv1.Record_Drain:
			consistent = !body.Drain.GetBegin()
		default:
			return nil, bad(seq, ErrBadRecord, "record without a body")
		}
	}
	s.next, s.consistent = next, consistent
	s.received.Store(next - 1)
	return &job{sess: s, in: recs, size: size, recv: time.Now(), done: make(chan struct{})}, nil
}

// work verifies and compresses batches.
func (r *Receiver) work(ctx context.Context) {
	for {
		select {
		case j := <-r.jobs:
			j.err = r.process(j)
			close(j.done)
		case <-ctx.Done():
			return
		}
	}
}

var zeroSums sync.Map // length -> xxhash of that many zeros

func zeroSum(n int) uint64 {
	if v, ok := zeroSums.Load(n); ok {
		return v.(uint64)
	}
	s := ferry.ZeroSum(n)
	zeroSums.Store(n, s)
	return s
}

func (r *Receiver) process(j *job) error {
	vm := j.sess.name
	j.out = make([]journal.Record, len(j.in))
	need := 0
	for _, rec := range j.in {
		if w := rec.GetWrite(); w != nil && !w.GetZero() {
			need += arenaNeed(len(w.GetData()))
		}
	}
	var arena *[]byte
	if need > 0 {
		arena = r.arenas.get(need)
		j.bufs = append(j.bufs, arena)
	}
	for i, rec := range j.in {
		out := &j.out[i]
		*out = journal.Record{VM: vm, Seq: ferry.Seq(rec.GetSeq())}
		switch body := rec.GetBody().(type) {
		case *ferryv1.Record_Write:
			w := body.Write
			out.Kind, out.Disk, out.Offset, out.Length, out.Sum = journal.KindWrite, int(w.GetDisk()), int64(w.GetOffset()), int(w.GetLength()), w.GetXxhash()
			if w.GetZero() {
				if zeroSum(out.Length) != out.Sum {
					return &RecordError{VM: string(vm), Seq: rec.GetSeq(), Err: ErrChecksum, Msg: fmt.Sprintf("zero write of %d bytes carries xxhash %016x", out.Length, out.Sum)}
				}
				out.Codec = journal.CodecZero
				continue
			}
			if got := xxhash.Sum64(w.GetData()); got != out.Sum {
				return &RecordError{VM: string(vm), Seq: rec.GetSeq(), Err: ErrChecksum, Msg: fmt.Sprintf("disk %d offset %d: data hashes to %016x, record says %016x", out.Disk, out.Offset, got, out.Sum)}
			}
			// Compressed payloads go into the batch's arena; a raw one is
			// the message's own data.
			out.Payload = encodeInto(arena, func(dst []byte) []byte {
				var p []byte
				out.Codec, p = r.comp.Encode(dst, w.GetData())
				if out.Codec == journal.CodecRaw {
					return nil
				}
				return p
			})
			if out.Codec == journal.CodecRaw {
				out.Payload = w.GetData()
			}
			// The block sums keep the VM's hash index, which a resync
			// reads instead of the data.
			out.BlockSums = ferry.BlockSums(make([]uint64, 0, len(w.GetData())/ferry.BlockSize), w.GetData())
		case *ferryv1.Record_Marker:
			m := body.Marker
			out.Kind = journal.KindMarker
			out.Consistency, _ = wire.Consistency(m.GetConsistency())
			out.Tag = m.GetTag()
			if strings.HasPrefix(out.Tag, ReservedTagPrefix) && !r.wasGranted(vm, out.Tag) {
				// Only the receiver makes multi-VM points. The marker is kept
				// (a receiver that restarted forgot what it asked for, and an
				// agent must not stop over it) but not as one of those.
				r.log.Warn("marker tag the receiver did not ask for: kept as a single-VM point", "vm", vm, "seq", rec.GetSeq(), "tag", out.Tag)
				out.Tag = UnaskedTagPrefix + out.Tag
			}
			// The agent's clock says when the point was cut, but not later
			// than the receiver's clock allows: a point stamped in the
			// future would look fresh for as long, and hide the RPO.
			now := r.cfg.Clock.Now().UTC()
			out.Time = now
			if ns := m.GetTimeUnixNano(); ns != 0 {
				if t := time.Unix(0, ns).UTC(); !t.After(now.Add(r.cfg.MaxClockSkew)) {
					out.Time = t
				} else {
					r.log.Warn("marker stamped in the future: the receipt time is kept instead", "vm", vm, "seq", rec.GetSeq(), "stamped", t, "now", now)
				}
			}
		case *ferryv1.Record_Drain:
			out.Kind = journal.KindDrainEnd
			if body.Drain.GetBegin() {
				out.Kind = journal.KindDrainBegin
			}
			out.DrainReason = uint8(body.Drain.GetReason())
		}
	}
	return nil
}

// forward hands verified batches to the committer in stream order. A batch
// that failed verification ends the session: neither it nor anything after
// it is committed.
func (r *Receiver) forward(s *session) {
	// Batches the forwarder drops give their budget back, those still
	// queued too (the receiving side closes the queue when it ends).
	defer func() {
		go func() {
			for j := range s.fifo {
				j.held.release()
			}
		}()
	}()
	for {
		var j *job
		select {
		case j = <-s.fifo:
			if j == nil {
				return // the receiving side ended
			}
		case <-s.ctx.Done():
			return
		}
		select {
		case <-j.done:
		case <-s.ctx.Done():
			j.held.release()
			return
		}
		if j.err != nil {
			j.held.release()
			r.m.rejected.WithLabelValues(rejectReason(j.err)).Inc()
			for _, b := range j.bufs {
				r.arenas.put(b)
			}
			s.fail(j.err)
			return
		}
		select {
		case r.commit.in <- commitItem{sess: s, recs: j.out, bufs: j.bufs, bytes: j.size, recv: j.recv, held: j.held}:
		case <-s.ctx.Done():
			j.held.release()
			return
		}
	}
}

// errSessionEnded: the stream ended before what was waited for happened.
var errSessionEnded = errors.New("stream ended")

// waitDurable waits until seq is durable, the session ends
// (errSessionEnded) or ctx ends.
func (s *session) waitDurable(ctx context.Context, seq uint64) error {
	for {
		// The channel first: a commit after the check closes it.
		s.durableMu.Lock()
		moved := s.durableCh
		s.durableMu.Unlock()
		if s.durable.Load() >= seq {
			return nil
		}
		select {
		case <-moved:
		case <-s.ctx.Done():
			return errSessionEnded
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
