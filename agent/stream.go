package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cbt"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// sender builds batches on one open stream. Only the replication goroutine
// uses it.
type sender struct {
	a      *Agent
	ctx    context.Context
	stream ferryv1.Replication_ReplicateClient
	batch  []*ferryv1.Record
	bytes  int
}

// errStalled ends a stream on which the receiver stopped answering.
var errStalled = errors.New("the receiver did not answer: the stream stalled")

// session runs one stream: hello, reconcile the window with what the
// receiver holds, resend what it lacks, then stream new changes. A stream
// the receiver stops answering ends with errStalled.
func (a *Agent) session(parent context.Context) error {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	a.heard.Store(time.Now().UnixNano())
	a.awaitHello.Store(true)
	go a.watchdog(ctx, cancel)
	err := a.stream(ctx)
	if cause := context.Cause(ctx); errors.Is(cause, errStalled) {
		return cause
	}
	return err
}

// watchdog ends the session's stream (cancel with errStalled) when the
// agent waits for an answer, to its hello or to records not yet
// acknowledged, and has heard nothing from the receiver for
// AnswerTimeout. Over a damaged link, a lost frame can leave a stream
// (and its connection's flow control) waiting forever although the
// connection answers its keepalives.
func (a *Agent) watchdog(ctx context.Context, cancel context.CancelCauseFunc) {
	timeout := a.cfg.AnswerTimeout
	tick := time.NewTicker(timeout / 8)
	defer tick.Stop()
	since := time.Now() // since when the agent waits without an answer
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			a.mu.Lock()
			waiting := a.awaitHello.Load() || len(a.window) > 0
			a.mu.Unlock()
			if !waiting {
				since = now
				continue
			}
			if heard := time.Unix(0, a.heard.Load()); heard.After(since) {
				since = heard
			}
			if now.Sub(since) >= timeout {
				cancel(fmt.Errorf("%w for %v", errStalled, timeout))
				return
			}
		}
	}
}

// stream opens the stream and runs it.
func (a *Agent) stream(parent context.Context) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	stream, err := ferryv1.NewReplicationClient(a.client()).Replicate(ctx)
	if err != nil {
		return err
	}
	hello := &ferryv1.Hello{Vm: a.cfg.VM, Epoch: a.cfg.Epoch, BlockSize: blockdev.BlockSize, AgentVersion: Version, Machine: a.cfg.Machine, AgentInstance: a.instance,
		AgentHost: hostname(), HeartbeatMillis: uint32(a.cfg.Heartbeat.Milliseconds())}
	for _, d := range a.cfg.Disks {
		hello.Disks = append(hello.Disks, &ferryv1.DiskInfo{Name: d.Name, SizeBytes: uint64(d.Device.Size())})
	}
	a.mu.Lock()
	hello.AckedSeq = a.acked
	a.mu.Unlock()
	if err := stream.Send(&ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Hello{Hello: hello}}); err != nil {
		return err
	}
	msg, err := stream.Recv()
	a.heard.Store(time.Now().UnixNano())
	a.awaitHello.Store(false)
	if err != nil {
		if owner := stream.Trailer().Get(wire.OwnerTrailer); len(owner) > 0 && owner[0] != "" {
			return &movedError{addr: owner[0], err: err}
		}
		return err
	}
	ha := msg.GetHelloAck()
	if ha == nil {
		return fmt.Errorf("%w: receiver answered the hello with %T", errFatal, msg.GetMsg())
	}
	resend := a.reconcile(ha)
	a.setPolicy(ha.GetPolicy())
	a.connected.Store(true)
	a.log.Info("stream open", "durable_seq", ha.GetDurableSeq(), "next_seq", a.nextSeq, "resend_batches", len(resend), "need", need(a.need.Load()))

	recvErr := make(chan error, 1)
	go func() { recvErr <- a.receiveAcks(stream) }()
	s := &sender{a: a, ctx: ctx, stream: stream}
	sendErr := make(chan error, 1)
	go func() {
		err := s.resend(resend)
		if err == nil {
			err = a.replicate(s)
		}
		s.park()
		sendErr <- err
	}()
	select {
	case err = <-recvErr:
		cancel()
		<-sendErr
	case err = <-sendErr:
		cancel()
		<-recvErr
	}
	return err
}

// reconcile trims the window to what the receiver lacks and decides whether
// a resync is needed. It returns the batches to send again.
func (a *Agent) reconcile(ha *ferryv1.HelloAck) []*sentBatch {
	d := ha.GetDurableSeq()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.trimLocked(d)
	first := a.nextSeq // what the receiver must expect next, if the window is empty
	if len(a.window) > 0 {
		first = a.window[0].recs[0].GetSeq()
	}
	fresh := a.nextSeq == 0
	a.deferred.Store(ha.GetDeferSync() && d == 0 && len(a.window) == 0)
	switch {
	case a.deferred.Load():
		// Synchronize during failover only: nothing moves now; the
		// failback's shutdown asks for the whole disks.
		a.need.Store(int32(needNone))
	case fresh && ha.GetReplicaEmpty():
		// An empty replica: copy everything (all-zero blocks are skipped).
		a.need.Store(int32(needInitial))
	case fresh && d == 0:
		// No record yet, but the receiver holds disks already (the
		// primary's own, at a master target): compare, send what differs.
		a.need.Store(int32(needResync))
	case fresh && need(a.need.Load()) == needInitial:
		// A new agent for a replica that already has data: compare, don't copy.
		a.need.Store(int32(needResync))
	case fresh && need(a.need.Load()) == needNone && d != a.savedAcked:
		// The receiver does not hold exactly what it acknowledged before
		// this agent shut down (it lost data, or another agent wrote).
		a.log.Warn("receiver's stream is not where the agent left it; resyncing by hash", "durable_seq", d, "acked_at_shutdown", a.savedAcked)
		a.need.Store(int32(needResync))
	case !fresh && first != d+1:
		// The receiver lost or gained records this agent cannot account for.
		a.log.Warn("receiver's stream does not continue the agent's; resyncing by hash", "durable_seq", d, "agent_next", first)
		a.window, a.windowBytes = nil, 0
		a.need.Store(int32(needResync))
	}
	if len(a.window) == 0 {
		a.nextSeq = d + 1
		a.issued.Store(d)
	}
	if fresh {
		a.drainOpen.Store(!ha.GetConsistent() && d > 0)
	}
	a.acked = d
	return append([]*sentBatch(nil), a.window...)
}

// trimLocked drops what the receiver holds durably (sequences up to d).
func (a *Agent) trimLocked(d uint64) {
	i := 0
	for i < len(a.window) && a.window[i].last <= d {
		a.windowBytes -= a.window[i].bytes
		i++
	}
	a.window = a.window[i:]
	if len(a.window) > 0 && a.window[0].recs[0].GetSeq() <= d {
		b := a.window[0]
		j := 0
		for j < len(b.recs) && b.recs[j].GetSeq() <= d {
			j++
		}
		b.recs = b.recs[j:]
	}
}

func (a *Agent) receiveAcks(stream ferryv1.Replication_ReplicateClient) error {
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		a.heard.Store(time.Now().UnixNano())
		if cmd := msg.GetCommand(); cmd != nil {
			select {
			case a.cmds <- cmd:
			default:
				return fmt.Errorf("%w: too many commands pending", errFatal)
			}
			a.tr.Wake()
			continue
		}
		ack := msg.GetAck()
		if ack == nil {
			return fmt.Errorf("%w: unexpected %T from the receiver", errFatal, msg.GetMsg())
		}
		a.mu.Lock()
		if ack.GetDurableSeq() > a.acked {
			a.acked = ack.GetDurableSeq()
			a.trimLocked(a.acked)
		}
		a.m.acked.Set(float64(a.acked))
		a.m.unacked.Set(float64(a.windowBytes))
		close(a.acksMoved)
		a.acksMoved = make(chan struct{})
		a.mu.Unlock()
		select {
		case a.windowFree <- struct{}{}:
		default:
		}
	}
}

// resend sends the window's batches again, in order.
func (s *sender) resend(batches []*sentBatch) error {
	for _, b := range batches {
		if err := s.a.throttle.wait(s.ctx, b.bytes); err != nil {
			return err
		}
		s.a.sent.Add(b.bytes)
		if err := s.stream.Send(&ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Batch{Batch: &ferryv1.Batch{Records: b.recs}}}); err != nil {
			return err
		}
	}
	return nil
}

// add gives the next sequence to rec and appends it to the batch, sending
// the batch first when rec would take it past the target size.
func (s *sender) add(rec *ferryv1.Record) error {
	n := len(rec.GetWrite().GetData())
	if len(s.batch) > 0 && s.bytes+n > s.a.cfg.BatchBytes {
		if err := s.flush(); err != nil {
			return err
		}
	}
	rec.Seq = s.a.nextSeq
	wire.Seal(rec)
	s.a.issued.Store(rec.Seq)
	s.a.nextSeq++
	s.batch = append(s.batch, rec)
	s.bytes += n
	return nil
}

// flush waits for room in the window, puts the batch in it and sends it.
func (s *sender) flush() error {
	if len(s.batch) == 0 {
		return nil
	}
	a := s.a
	b := &sentBatch{recs: s.batch, bytes: int64(s.bytes), last: s.batch[len(s.batch)-1].GetSeq()}
	for {
		a.mu.Lock()
		if a.windowBytes == 0 || a.windowBytes+b.bytes <= a.cfg.WindowBytes {
			a.window = append(a.window, b)
			a.windowBytes += b.bytes
			a.m.unacked.Set(float64(a.windowBytes))
			a.mu.Unlock()
			break
		}
		a.mu.Unlock()
		select {
		case <-a.windowFree:
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
	}
	s.batch, s.bytes = nil, 0
	if err := a.throttle.wait(s.ctx, b.bytes); err != nil {
		return err
	}
	a.m.sentBytes.Add(float64(b.bytes))
	a.sent.Add(b.bytes)
	return s.stream.Send(&ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Batch{Batch: &ferryv1.Batch{Records: b.recs}}})
}

// park moves a batch that was being built into the window unsent, so that
// its sequences are not lost when the stream ends; the next stream sends it.
func (s *sender) park() {
	if len(s.batch) == 0 {
		return
	}
	a := s.a
	a.mu.Lock()
	a.window = append(a.window, &sentBatch{recs: s.batch, bytes: int64(s.bytes), last: s.batch[len(s.batch)-1].GetSeq()})
	a.windowBytes += int64(s.bytes)
	a.mu.Unlock()
	s.batch, s.bytes = nil, 0
}

func writeRecord(disk int, off int64, data []byte) *ferryv1.Record {
	w := &ferryv1.Write{Disk: uint32(disk), Offset: uint64(off), Length: uint32(len(data)), Xxhash: xxhash.Sum64(data)}
	if blockdev.IsZero(data) {
		w.Zero = true
	} else {
		w.Data = data
	}
	return &ferryv1.Record{Body: &ferryv1.Record_Write{Write: w}}
}

func markerRecord(m cbt.MarkRequest) *ferryv1.Record {
	c := ferryv1.Consistency_CONSISTENCY_CRASH
	if m.App {
		c = ferryv1.Consistency_CONSISTENCY_APP
	}
	if m.Time.IsZero() {
		panic("marker without a time")
	}
	return &ferryv1.Record{Body: &ferryv1.Record_Marker{Marker: &ferryv1.Marker{Consistency: c, Tag: m.Tag, TimeUnixNano: m.Time.UnixNano()}}}
}

func drainRecord(begin bool, reason ferryv1.DrainReason) *ferryv1.Record {
	return &ferryv1.Record{Body: &ferryv1.Record_Drain{Drain: &ferryv1.Drain{Begin: begin, Reason: reason}}}
}

func (s *sender) heartbeat() error {
	hb := &ferryv1.Heartbeat{TimeUnixNano: s.a.cfg.Clock.Now().UnixNano()}
	if p, ok := s.a.progressValue(); ok {
		hb.ResyncProgress = &p
	}
	return s.stream.Send(&ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Heartbeat{Heartbeat: hb}})
}

// hostname is the host the agent runs on, for the operator's status.
func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
}
