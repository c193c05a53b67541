// Package agent is Ferry's source-side mobility agent. It protects one VM:
// it captures every change of the VM's disks (through a write splitter, or
// by scanning disks that other processes write), streams the changes in
// order to a receiver over one gRPC stream, resumes after reconnecting from
// the last acknowledged sequence, and falls back to a dirty bitmap when its
// bounded queue overflows, so memory stays bounded however long an outage
// lasts.
package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cbt"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// Version is reported to the receiver in every hello.
const Version = "0.1.0"

// ChunkSize is the unit of hash comparison (scan mode and resync).
const ChunkSize = 64 << 10

// MaxWrite is the largest write one record carries: the unit a fair
// comparison of the ingest path uses too.
const MaxWrite = 1 << 20

// need is work the agent must do before the stream is write-ordered.
type need int

const (
	needNone need = iota
	needInitial
	needResync
)

func (n need) String() string {
	return [...]string{"none", "initial replication", "resync"}[n]
}

// sentBatch is a batch in the window: sent (or about to be) and not yet
// acknowledged.
type sentBatch struct {
	recs  []*ferryv1.Record
	bytes int64
	last  uint64
}

// Agent protects one VM. Create it with New, start it with Open, stop it
// with Close.
type Agent struct {
	cfg Config
	log *slog.Logger
	// instance identifies this agent's state to the receiver.
	instance string
	tr       *cbt.Tracker
	m        *metrics
	// conns are the connections to process servers, by address; target
	// the one streams use now.
	connMu   sync.Mutex
	conns    map[string]*grpc.ClientConn
	target   string
	dialOpts []grpc.DialOption

	// Owned by the replication goroutine.
	nextSeq   uint64 // 0 until the first hello answer
	sweepDisk int
	sweepOff  int64
	scanTable [][]uint64
	// scanVersion is each file disk's version read before its last
	// hashing (nil: unknown, read it again).
	scanVersion []*diskVersion
	lastMark    time.Time
	readBuf     []byte
	// savedAcked is the receiver's durable sequence when the agent last
	// shut down cleanly.
	savedAcked uint64

	need       atomic.Int32
	sent       atomic.Int64 // payload bytes handed to the stream
	throttle   *throttle    // --max-bandwidth
	hashBytes  atomic.Int64 // hash bytes received in resyncs
	reconnects atomic.Int64
	stalls     atomic.Int64
	connected  atomic.Bool
	progress   atomic.Uint64 // float64 bits; NaN when nothing is in progress
	scanDue    atomic.Bool
	// drainOpen: a drain began on the stream and its end is not sent yet
	// (written by the replication goroutine, read by Synced).
	drainOpen atomic.Bool
	// issued is the last sequence given to a record; Synced holds only
	// once the receiver acknowledged it.
	issued atomic.Uint64

	mu          sync.Mutex
	window      []*sentBatch
	windowBytes int64
	acked       uint64
	windowFree  chan struct{}
	// acksMoved is closed, and replaced, at every acknowledgement:
	// WaitSynced wakes on it.
	acksMoved chan struct{}
	cmds      chan *ferryv1.Command
	closed    bool

	// The policy's frequencies (nanoseconds; 0: off).
	crashEvery atomic.Int64
	policy     atomic.Pointer[ferryv1.Policy]
	// deferred: the receiver synchronizes during failover only; nothing
	// is sent until its shutdown command asks for the whole disks.
	deferred atomic.Bool
	// checkpointDue: the receiver asked for a point; the next scan pass
	// cuts one even if it finds no change.
	checkpointDue atomic.Bool
	appEvery      atomic.Int64
	holdMu        sync.Mutex
	hold          *groupHold

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	done   chan struct{}
	errMu  sync.Mutex
	err    error
	// heard is when the stream last brought a message from the receiver
	// (unix nanoseconds); awaitHello is set while the hello waits for its
	// answer. The session's watchdog reads both.
	heard      atomic.Int64
	awaitHello atomic.Bool
}

// New validates cfg and builds an agent.
func New(cfg Config) (*Agent, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	devs := make([]blockdev.Device, len(cfg.Disks))
	for i, d := range cfg.Disks {
		devs[i] = d.Device
	}
	a := &Agent{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "agent", "vm", cfg.VM),
		tr:         cbt.NewTracker(devs, cfg.QueueBytes),
		windowFree: make(chan struct{}, 1),
		acksMoved:  make(chan struct{}),
		cmds:       make(chan *ferryv1.Command, 4),
		done:       make(chan struct{}),
		readBuf:    make([]byte, MaxWrite),
	}
	a.m = newMetrics(cfg.Registerer, a)
	a.throttle = newThrottle(cfg.MaxBandwidth, func(d time.Duration) { a.m.throttled.Add(d.Seconds()) })
	a.crashEvery.Store(int64(cfg.CrashInterval))
	a.appEvery.Store(int64(cfg.AppInterval))
	a.progress.Store(math.Float64bits(math.NaN()))
	return a, nil
}

// Disk returns the write splitter of disk i: the device the protected
// machine must write through (splitter mode).
func (a *Agent) Disk(i int) blockdev.Device { return a.tr.Device(i) }

// Mark asks for a recovery point at the current place in the write stream.
// It returns false when no point can be cut now (the agent is draining its
// bitmap, or the queue is full).
func (a *Agent) Mark(app bool, tag string) bool {
	return a.tr.Mark(cbt.MarkRequest{App: app, Tag: tag, Time: a.cfg.Clock.Now()})
}

// ErrQuiesce is returned by MarkApp when the application could not be
// quiesced: no app-consistent point was cut.
var ErrQuiesce = errors.New("application not quiesced: no app-consistent point")

// MarkApp cuts an application-consistent point: the freeze hook quiesces
// the application (it flushes and holds its writes), an app marker is
// queued behind everything it wrote, and the thaw hook lets it go on. A
// freeze that fails or outlasts QuiesceTimeout cuts no point; the thaw hook
// still runs, the failure is counted (ferry_agent_quiesce_failures_total)
// and returned.
func (a *Agent) MarkApp(ctx context.Context, tag string) error {
	start := time.Now()
	err := a.freeze(ctx)
	if err == nil {
		if !a.tr.Mark(cbt.MarkRequest{App: true, Tag: tag, Time: a.cfg.Clock.Now()}) {
			err = errors.New("the agent is draining its bitmap")
		}
		if a.cfg.Thaw != nil {
			if terr := a.cfg.Thaw(ctx); terr != nil && err == nil {
				err = fmt.Errorf("thaw: %w", terr)
			}
		}
	}
	a.m.quiesceSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		a.m.quiesceFailures.Inc()
		a.log.Warn("app-consistent point not cut", "tag", tag, "err", err)
		return fmt.Errorf("%w: %w", ErrQuiesce, err)
	}
	return nil
}

// Done is closed when the agent stops on its own after an error the
// receiver says cannot be retried; Err then returns it.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Err returns the error that stopped the agent, or nil.
func (a *Agent) Err() error {
	a.errMu.Lock()
	defer a.errMu.Unlock()
	return a.err
}

// Open loads the agent's state, connects and starts replicating.
func (a *Agent) Open(ctx context.Context) error {
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("open agent: %w", err)
	}
	st, ok, err := a.loadState()
	if err != nil {
		return err
	}
	if a.instance = st.Instance; a.instance == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		a.instance = hex.EncodeToString(b[:])
	}
	a.scanTable = make([][]uint64, len(a.cfg.Disks))
	a.scanVersion = make([]*diskVersion, len(a.cfg.Disks))
	switch {
	case !ok:
		a.need.Store(int32(needInitial)) // or a resync, if the receiver already has data
		a.log.Info("no saved state: replication starts from scratch")
	case !st.Clean:
		a.need.Store(int32(needResync))
		a.log.Warn("the agent did not shut down cleanly: changes may be lost, resyncing by hash")
	default:
		a.savedAcked = st.Acked
		if err := a.tr.LoadBitmaps(a.bitmapPath); err != nil {
			a.need.Store(int32(needResync))
			a.log.Warn("saved bitmap unusable, resyncing by hash", "err", err)
		}
		if a.cfg.Mode == ModeScan {
			for i, d := range a.cfg.Disks {
				n := int((d.Device.Size() + ChunkSize - 1) / ChunkSize)
				if a.scanTable[i], err = loadHashes(a.hashPath(i), n); err != nil {
					a.need.Store(int32(needResync))
					a.log.Warn("saved scan table unusable, resyncing by hash", "err", err)
				}
			}
		}
	}
	// From here until a clean Close, a crash must lead to a resync.
	if err := a.saveState(false); err != nil {
		return fmt.Errorf("open agent: %w", err)
	}
	opts := append([]grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(16<<20), grpc.MaxCallRecvMsgSize(16<<20)),
		// Every message checked both ways: a hello, an acknowledgement or
		// a command damaged on the way ends the stream and is sent again.
		wire.Checked(),
		grpc.WithInitialWindowSize(4 << 20),
		grpc.WithInitialConnWindowSize(8 << 20),
	}, a.cfg.DialOptions...)
	a.dialOpts, a.conns = opts, map[string]*grpc.ClientConn{}
	if err := a.connectTo(a.cfg.Target); err != nil {
		return fmt.Errorf("open agent: %w", err)
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.run(a.ctx) }()
	if !a.cfg.IgnorePolicy || a.cfg.CrashInterval > 0 || a.cfg.AppInterval > 0 {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.schedulePoints(a.ctx) }()
	}
	if a.cfg.Mode == ModeScan {
		a.scanDue.Store(true)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			clock.Every(a.ctx, a.cfg.ScanInterval, func() { a.scanDue.Store(true); a.tr.Wake() })
		}()
	}
	return nil
}

// Close waits up to ShutdownTimeout for what was captured to be
// acknowledged, stops, and saves every change not acknowledged as a dirty
// bitmap so that the next run sends it without a full resync.
func (a *Agent) Close(ctx context.Context) error {
	if a.cancel == nil || a.closed {
		return nil
	}
	a.closed = true
	wctx, cancel := context.WithTimeout(ctx, a.cfg.ShutdownTimeout)
	if err := a.WaitSynced(wctx); err != nil {
		a.log.Warn("shutting down with unacknowledged changes; they are kept in the bitmap", "err", err)
	}
	cancel()
	a.cancel()
	a.wg.Wait()
	a.closeConns()
	// Everything not acknowledged goes into the bitmaps.
	a.tr.EnterBitmap()
	a.mu.Lock()
	for _, b := range a.window {
		for _, r := range b.recs {
			if w := r.GetWrite(); w != nil {
				a.tr.MarkDirty(int(w.GetDisk()), int64(w.GetOffset()), int64(w.GetLength()))
			}
		}
	}
	a.window, a.windowBytes = nil, 0
	a.mu.Unlock()
	if err := a.tr.SaveBitmaps(a.bitmapPath); err != nil {
		return fmt.Errorf("close agent: %w", err)
	}
	if a.cfg.Mode == ModeScan {
		for i, t := range a.scanTable {
			if t != nil {
				if err := saveHashes(a.hashPath(i), t); err != nil {
					return fmt.Errorf("close agent: %w", err)
				}
			}
		}
	}
	// An unfinished initial replication or resync is redone by hash.
	clean := need(a.need.Load()) == needNone
	if err := a.saveState(clean); err != nil {
		return fmt.Errorf("close agent: %w", err)
	}
	a.log.Info("agent stopped", "clean", clean, "dirty_blocks", a.tr.Stats().DirtyBlocks)
	return nil
}

// Abort stops the agent at once, as a crash or the loss of its site would:
// nothing more is sent and nothing is saved, so the next run resyncs.
func (a *Agent) Abort() {
	if a.cancel == nil || a.closed {
		return
	}
	a.closed = true
	a.cancel()
	a.wg.Wait()
	a.closeConns()
}

// Synced reports whether everything captured so far is acknowledged and the
// stream is write-ordered.
func (a *Agent) Synced() bool {
	st := a.tr.Stats()
	a.mu.Lock()
	empty := len(a.window) == 0
	a.mu.Unlock()
	if a.deferred.Load() {
		return a.connected.Load() && empty // nothing is to be sent before the failback
	}
	// A record sits in the batch being built (popped from the queue, not
	// yet in the window), or a drain's end is still to be sent: not synced.
	a.mu.Lock()
	allAcked := a.acked >= a.issued.Load()
	a.mu.Unlock()
	return a.connected.Load() && need(a.need.Load()) == needNone && st.Mode == cbt.ModeQueue &&
		st.QueueLen == 0 && empty && allAcked && !a.drainOpen.Load() && !a.scanDue.Load()
}

// WaitSynced waits until Synced holds. It wakes at every acknowledgement
// (what makes it hold, once everything was sent), and every 50 ms for
// what no acknowledgement follows (a reconnection, a write while idle).
func (a *Agent) WaitSynced(ctx context.Context) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		a.mu.Lock()
		moved := a.acksMoved
		a.mu.Unlock()
		if a.Synced() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for sync: %w", ctx.Err())
		case <-a.done:
			return a.Err()
		case <-moved:
		case <-t.C:
		}
	}
}

// Stats is a snapshot of the agent.
type Stats struct {
	Tracker cbt.Stats
	// SentBytes is the write payload sent (resends included); HashBytes the
	// chunk hashes received from the receiver by resyncs.
	SentBytes   int64
	HashBytes   int64
	Acked       uint64
	WindowBytes int64
	Connected   bool
	Need        string
	// Reconnects counts streams that ended and were opened again; Stalls
	// those of them the receiver stopped answering (AnswerTimeout).
	Reconnects int64
	Stalls     int64
	// Deferred: the receiver synchronizes during failover only, and the
	// agent sends nothing until the failback.
	Deferred bool
}

// Stats returns a snapshot of the agent's state.
func (a *Agent) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return Stats{Tracker: a.tr.Stats(), SentBytes: a.sent.Load(), HashBytes: a.hashBytes.Load(), Reconnects: a.reconnects.Load(), Stalls: a.stalls.Load(), Acked: a.acked, WindowBytes: a.windowBytes, Connected: a.connected.Load(), Need: need(a.need.Load()).String(), Deferred: a.deferred.Load()}
}

// run keeps a stream open, reconnecting with backoff, until ctx ends or the
// receiver refuses the agent for good.
func (a *Agent) run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := a.session(ctx)
		a.connected.Store(false)
		if ctx.Err() != nil {
			return
		}
		if permanent(err) {
			a.errMu.Lock()
			a.err = err
			a.errMu.Unlock()
			a.log.Error("receiver refused the agent; stopping", "err", err)
			close(a.done)
			return
		}
		a.m.reconnects.Inc()
		a.reconnects.Add(1)
		if errors.Is(err, errStalled) {
			a.m.stalls.Inc()
			a.stalls.Add(1)
			// The connection itself may be wedged (a lost window update
			// starves its flow control): a new one replaces it.
			a.redial()
			a.nextTarget()
		} else if moved := (*movedError)(nil); errors.As(err, &moved) {
			a.log.Info("the VM is served by another process server; connecting there", "ps", moved.addr)
			if err := a.connectTo(moved.addr); err != nil {
				a.log.Warn("cannot connect to the VM's process server", "ps", moved.addr, "err", err)
			}
		} else if code := status.Code(err); code == codes.Unavailable || code == codes.DeadlineExceeded {
			a.nextTarget()
		}
		// A record (DATA_LOSS) or a message damaged on the way is sent
		// again at once: the receiver is fine, only the bytes were not.
		if time.Since(start) > 5*time.Second || status.Code(err) == codes.DataLoss || wire.Damaged(err) {
			backoff = 50 * time.Millisecond
		}
		a.log.Warn("stream ended; reconnecting", "err", err, "in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// permanent reports whether the receiver refused the agent in a way that
// retrying cannot fix.
func permanent(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.PermissionDenied, codes.Unauthenticated:
		return true
	}
	return errors.Is(err, errFatal)
}

var errFatal = errors.New("agent cannot continue")

func (a *Agent) setProgress(p float64) { a.progress.Store(math.Float64bits(p)) }

func (a *Agent) progressValue() (float64, bool) {
	p := math.Float64frombits(a.progress.Load())
	return p, !math.IsNaN(p)
}

// movedError ends a stream that a process server refused because another
// one serves the VM: addr is that one.
type movedError struct {
	addr string
	err  error
}

func (e *movedError) Error() string { return fmt.Sprintf("served by %s: %v", e.addr, e.err) }
func (e *movedError) Unwrap() error { return e.err }

// client is the connection streams use now.
func (a *Agent) client() *grpc.ClientConn {
	a.connMu.Lock()
	defer a.connMu.Unlock()
	return a.conns[a.target]
}

// connectTo makes addr the process server streams use, connecting to it
// if the agent has not yet.
func (a *Agent) connectTo(addr string) error {
	a.connMu.Lock()
	defer a.connMu.Unlock()
	if a.conns[addr] == nil {
		c, err := grpc.NewClient(addr, a.dialOpts...)
		if err != nil {
			return fmt.Errorf("connect %s: %w", addr, err)
		}
		a.conns[addr] = c
	}
	a.target = addr
	return nil
}

// nextTarget moves on to the next configured process server, after the
// one in use did not answer.
func (a *Agent) nextTarget() {
	all := append([]string{a.cfg.Target}, a.cfg.Targets...)
	if len(all) < 2 {
		return
	}
	a.connMu.Lock()
	cur := a.target
	a.connMu.Unlock()
	next := all[0]
	for i, t := range all {
		if t == cur {
			next = all[(i+1)%len(all)]
			break
		}
	}
	if err := a.connectTo(next); err != nil {
		a.log.Warn("cannot connect to process server", "ps", next, "err", err)
		return
	}
	a.log.Info("trying the next process server", "ps", next)
}

// redial closes the connection streams use and opens a new one to the
// same process server.
func (a *Agent) redial() {
	a.connMu.Lock()
	addr := a.target
	if c := a.conns[addr]; c != nil {
		c.Close()
		delete(a.conns, addr)
	}
	a.connMu.Unlock()
	if err := a.connectTo(addr); err != nil {
		a.log.Warn("cannot connect to process server", "ps", addr, "err", err)
	}
}

func (a *Agent) closeConns() {
	a.connMu.Lock()
	defer a.connMu.Unlock()
	for addr, c := range a.conns {
		c.Close()
		delete(a.conns, addr)
	}
}
