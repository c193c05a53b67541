// Package ingest receives replication streams and writes them to a journal:
// the receiving half shared by the process server (forward replication) and
// the master target (failback). For every batch it checks the records
// against the stream's rules and each write's xxhash, compresses the data on
// a pool of workers, group-commits verified batches in stream order and
// acknowledges a sequence only once it is durable. A batch with any invalid
// record is refused whole and ends the stream with an error naming it.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// Config configures a Receiver.
type Config struct {
	Journal *journal.Journal
	// Codec for data that compresses (default zstd).
	Codec journal.Codec
	// Workers verify and compress batches (default GOMAXPROCS).
	Workers int
	// MaxBatchBytes bounds the data of one batch (default 4 MiB).
	MaxBatchBytes int
	// MaxWriteBytes bounds one write (default 1 MiB).
	MaxWriteBytes int
	// CommitBytes is the target size of one group commit (default 16 MiB).
	CommitBytes int
	// Depth is how many batches of one stream may be in flight between
	// receipt and commit (default 8): with MaxBatchBytes it bounds a
	// stream's memory.
	Depth int
	// InFlightBytes bounds the batch bytes of all streams together between
	// receipt and commit (default 64 MiB): the receiver's memory does not
	// grow with the number of agents. A stream waits for room before it
	// reads on.
	InFlightBytes int64
	// HelloTimeout bounds how long a new stream may take to send its
	// hello (default 1 min): a stream that sends none (its hello lost on
	// the way, or a peer that holds streams open) ends with
	// DeadlineExceeded instead of holding the receiver's resources.
	HelloTimeout time.Duration
	// MaxDiskBytes bounds a disk's declared size (default DefaultMaxDiskBytes):
	// a hello declaring a larger one is refused.
	MaxDiskBytes int64
	// Authorize, when set, is asked whether the stream's peer may write vm.
	Authorize func(ctx context.Context, vm ferry.VMID) error
	// Clock is the receiver's time (default real): a marker stamped more
	// than MaxClockSkew after it gets its receipt time instead.
	Clock clock.Clock
	// MaxClockSkew bounds how far in the future an agent's marker time may
	// be (default 5 min).
	MaxClockSkew time.Duration
	// Admit, when set, is asked before a stream takes over its VM (and
	// ends another stream of it) whether this agent may; an error refuses
	// the stream and leaves the VM's stream as it is. It should wrap
	// ErrDenied, ErrGeometry or another of the receiver's errors, which
	// decide the status code.
	Admit func(ctx context.Context, h *ferryv1.Hello) error
	// OnHello, when set, sees every accepted hello before it is answered
	// (the process server keeps the machine's description) and may add to
	// the answer (the VM's replication policy); an error refuses the
	// stream.
	OnHello func(ctx context.Context, h *ferryv1.Hello, ack *ferryv1.HelloAck) error
	// Ship, when set, is called with every group commit's records while
	// the journal commits them, and both must succeed before any of them
	// is acknowledged: the process server puts them where a takeover
	// finds them (pkg/tier). An error leaves them unacknowledged and ends
	// their streams with ErrNotDurable.
	Ship       func(ctx context.Context, recs []journal.Record) error
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Namespace prefixes metric names: ferry_<Namespace>_... (default "ps").
	Namespace string
}

func (c *Config) setDefaults() {
	c.Clock = clock.Or(c.Clock)
	if c.MaxClockSkew == 0 {
		c.MaxClockSkew = 5 * time.Minute
	}
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = time.Minute
	}
	if c.Codec == 0 {
		c.Codec = journal.CodecZstd
	}
	if c.Workers <= 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = 4 << 20
	}
	if c.MaxWriteBytes <= 0 {
		c.MaxWriteBytes = 1 << 20
	}
	if c.CommitBytes <= 0 {
		c.CommitBytes = 16 << 20
	}
	if c.Depth <= 0 {
		c.Depth = 8
	}
	if c.InFlightBytes <= 0 {
		c.InFlightBytes = 64 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Namespace == "" {
		c.Namespace = "ps"
	}
}

// Receiver implements the Replication service over a journal.
type Receiver struct {
	ferryv1.UnimplementedReplicationServer

	cfg    Config
	j      *journal.Journal
	comp   *journal.Compressor
	log    *slog.Logger
	m      *metrics
	arenas *arenas
	budget *budget

	jobs   chan *job
	commit *committer

	mu       sync.Mutex
	sessions map[ferry.VMID]*session
	closed   bool
	// granted are the group/ tags the receiver asked each VM's agent to
	// cut (the newest few): an agent may not use the prefix on its own.
	granted map[ferry.VMID][]string

	received sync.Map // journal.VMID -> *vmCounters

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns a receiver; Open starts it.
func New(cfg Config) (*Receiver, error) {
	cfg.setDefaults()
	if cfg.Journal == nil {
		return nil, errors.New("ingest: no journal")
	}
	comp, err := journal.NewCompressor(cfg.Codec)
	if err != nil {
		return nil, err
	}
	r := &Receiver{
		cfg:      cfg,
		j:        cfg.Journal,
		comp:     comp,
		log:      cfg.Logger,
		m:        newMetrics(cfg.Namespace, cfg.Registerer, cfg.Journal),
		jobs:     make(chan *job, cfg.Workers*2),
		sessions: map[ferry.VMID]*session{},
	}
	r.arenas = &arenas{}
	r.budget = newBudget(cfg.InFlightBytes)
	r.commit = &committer{j: r.j, ship: cfg.Ship, in: make(chan commitItem, cfg.Depth*4), commitBytes: cfg.CommitBytes, arenas: r.arenas, m: r.m}
	return r, nil
}

// Open starts the workers and the committer.
func (r *Receiver) Open(ctx context.Context) error {
	r.ctx, r.cancel = context.WithCancel(context.Background())
	for i := 0; i < r.cfg.Workers; i++ {
		r.wg.Add(1)
		go func() { defer r.wg.Done(); r.work(r.ctx) }()
	}
	r.wg.Add(1)
	go func() { defer r.wg.Done(); r.commit.run(r.ctx) }()
	return nil
}

// Close ends every stream, waits for what was verified to be committed and
// stops the workers.
func (r *Receiver) Close(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	sessions := make([]*session, 0, len(r.sessions))
	for _, s := range r.sessions {
		sessions = append(sessions, s)
	}
	r.mu.Unlock()
	for _, s := range sessions {
		s.fail(ErrClosed)
		select {
		case <-s.released:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.cancel()
	r.wg.Wait()
	return nil
}

// vmCounters are what the receiver counts per VM beyond the metrics.
type vmCounters struct {
	received atomic.Int64  // write payload bytes received
	progress atomic.Uint64 // float64 bits of the last reported resync progress
	// copy is where the copy under way was first reported (nil: none runs).
	copy atomic.Pointer[copyStart]
	// The agent's stream: what its hello said, when it opened (0: no
	// stream is open) and when its last message came (wall clock).
	link  atomic.Pointer[linkInfo]
	since atomic.Int64
	seen  atomic.Int64
	left  atomic.Int64 // when the last stream ended
}

type linkInfo struct {
	version, host string
	heartbeat     time.Duration
}

type copyStart struct {
	at       time.Time
	progress float64
	received int64
}

// Link is what the receiver knows of a VM's agent.
type Link struct {
	// Connected: a stream is open; Since it opened.
	Connected bool
	Since     time.Time
	// LastSeen is when the stream's last message came (zero when no
	// stream opened since the receiver started); Left when the last
	// stream ended.
	LastSeen, Left time.Time
	// Version and Host are what the agent said of itself; Heartbeat its
	// interval (0: it did not say).
	Version, Host string
	Heartbeat     time.Duration
	// Busy: batches received are not durable yet (the agent waits for
	// acknowledgements and need not send anything meanwhile).
	Busy bool
}

// Link returns what the receiver knows of vm's agent.
func (r *Receiver) Link(vm ferry.VMID) Link {
	c := r.counters(vm)
	var l Link
	if li := c.link.Load(); li != nil {
		l.Version, l.Host, l.Heartbeat = li.version, li.host, li.heartbeat
	}
	if ns := c.seen.Load(); ns != 0 {
		l.LastSeen = time.Unix(0, ns)
	}
	if ns := c.left.Load(); ns != 0 {
		l.Left = time.Unix(0, ns)
	}
	if ns := c.since.Load(); ns != 0 {
		l.Connected, l.Since = true, time.Unix(0, ns)
	}
	r.mu.Lock()
	s := r.sessions[vm]
	r.mu.Unlock()
	if s != nil && l.Connected {
		l.Busy = s.durable.Load() < s.received.Load()
	}
	return l
}

// Copy is an initial replication or resync under way, as its agent
// reports it.
type Copy struct {
	Progress float64       // 0 to 1
	Rate     float64       // bytes per second received since it was first reported
	Left     time.Duration // at that pace; 0 when not known yet
}

// CopyProgress returns vm's copy under way, if any.
func (r *Receiver) CopyProgress(vm ferry.VMID) (Copy, bool) {
	c := r.counters(vm)
	p, ok := r.Progress(vm)
	start := c.copy.Load()
	if !ok || start == nil {
		return Copy{}, false
	}
	out := Copy{Progress: p}
	elapsed := r.cfg.Clock.Now().Sub(start.at)
	if elapsed > 0 {
		out.Rate = float64(c.received.Load()-start.received) / elapsed.Seconds()
		if p > start.progress {
			out.Left = time.Duration(float64(elapsed) * (1 - p) / (p - start.progress))
		}
	}
	return out, true
}

func (r *Receiver) counters(vm ferry.VMID) *vmCounters {
	c, _ := r.received.LoadOrStore(vm, new(vmCounters))
	return c.(*vmCounters)
}

// ReceivedBytes is the write payload received for vm since the receiver
// started.
func (r *Receiver) ReceivedBytes(vm ferry.VMID) int64 { return r.counters(vm).received.Load() }

// Progress is the last initial-replication or resync progress vm's agent
// reported (0 to 1), and whether it reported any.
func (r *Receiver) Progress(vm ferry.VMID) (float64, bool) {
	b := r.counters(vm).progress.Load()
	return math.Float64frombits(b), b != 0
}

// Moved returns a channel closed when vm's durable sequence next moves:
// a waiter checks what it waits for, then waits on the channel it took
// before. ok is false when vm has no open stream (nothing will move).
func (r *Receiver) Moved(vm ferry.VMID) (ch <-chan struct{}, ok bool) {
	r.mu.Lock()
	s := r.sessions[vm]
	r.mu.Unlock()
	if s == nil {
		return nil, false
	}
	s.durableMu.Lock()
	defer s.durableMu.Unlock()
	return s.durableCh, true
}

// Sessions returns the VMs with an open stream.
func (r *Receiver) Sessions() []ferry.VMID {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]ferry.VMID, 0, len(r.sessions))
	for vm := range r.sessions {
		out = append(out, vm)
	}
	return out
}

// ReceiveHello receives a stream's first message, waiting HelloTimeout at
// most; a handler that looks at the hello before Replicate does (the
// process server, to relay a failback's stream) receives it through
// this. When the wait ends first, the receiving goroutine ends with the
// stream (gRPC cancels it when the handler returns).
func (r *Receiver) ReceiveHello(stream ferryv1.Replication_ReplicateServer) (*ferryv1.AgentMessage, error) {
	type received struct {
		msg *ferryv1.AgentMessage
		err error
	}
	got := make(chan received, 1)
	go func() {
		msg, err := stream.Recv()
		got <- received{msg, err}
	}()
	wait := time.NewTimer(r.cfg.HelloTimeout)
	defer wait.Stop()
	select {
	case g := <-got:
		return g.msg, g.err
	case <-wait.C:
		r.m.rejected.WithLabelValues("hello").Inc()
		r.log.Warn("stream refused: no hello", "peer", peerAddr(stream.Context()), "waited", r.cfg.HelloTimeout)
		return nil, grpcStatus(fmt.Errorf("%w: no hello within %v of the stream's start", ErrHelloTimeout, r.cfg.HelloTimeout))
	}
}

// Replicate serves one VM's stream.
func (r *Receiver) Replicate(stream ferryv1.Replication_ReplicateServer) error {
	ctx := stream.Context()
	first, err := r.ReceiveHello(stream)
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return grpcStatus(fmt.Errorf("%w: the first message of a stream must be a hello", ErrBadHello))
	}
	vm, err := r.checkHello(ctx, hello)
	if err != nil {
		r.m.rejected.WithLabelValues("hello").Inc()
		r.log.Warn("stream refused", "vm", hello.GetVm(), "err", err)
		return grpcStatus(err)
	}
	if r.cfg.Admit != nil {
		if err := r.cfg.Admit(ctx, hello); err != nil {
			r.m.rejected.WithLabelValues("hello").Inc()
			r.log.Warn("stream refused", "vm", hello.GetVm(), "err", err)
			return grpcStatus(err)
		}
	}
	// An agent of another direction must not take the stream over from
	// the VM's own agent: its epoch is checked before (and again, with the
	// journal's state, after) the takeover.
	if cur, err := r.j.VM(ctx, vm.Name); err == nil {
		if err := checkEpoch(hello, cur); err != nil {
			r.m.rejected.WithLabelValues("hello").Inc()
			r.log.Warn("stream refused", "vm", hello.GetVm(), "err", err)
			return grpcStatus(err)
		}
	}
	s, err := r.acquire(ctx, vm.Name)
	if err != nil {
		return grpcStatus(err)
	}
	defer r.release(s)
	// The journal state is read only now that no other stream of this VM
	// can commit anything.
	if vm, err = r.openVM(ctx, hello); err != nil {
		r.m.rejected.WithLabelValues("hello").Inc()
		r.log.Warn("stream refused", "vm", hello.GetVm(), "err", err)
		return grpcStatus(err)
	}
	ack := &ferryv1.HelloAck{
		DurableSeq: uint64(vm.LastSeq), Epoch: uint64(vm.Epoch), Consistent: vm.Consistent,
		ReplicaEmpty: vm.LastSeq == 0 && r.j.Base(vm.Name) == nil,
	}
	if r.cfg.OnHello != nil {
		if err := r.cfg.OnHello(ctx, hello, ack); err != nil {
			return grpcStatus(err)
		}
	}
	s.vm = vm
	s.next = uint64(vm.LastSeq) + 1
	s.received.Store(uint64(vm.LastSeq))
	s.consistent = vm.Consistent
	s.durable.Store(uint64(vm.LastSeq))
	if err := stream.Send(&ferryv1.ServerMessage{Msg: &ferryv1.ServerMessage_HelloAck{HelloAck: ack}}); err != nil {
		return err
	}
	from := peerAddr(ctx)
	r.log.Info("agent connected", "vm", vm.Name, "peer", from, "host", hello.GetAgentHost(), "instance", hello.GetAgentInstance(),
		"agent_version", hello.GetAgentVersion(), "epoch", vm.Epoch, "durable_seq", vm.LastSeq, "consistent", vm.Consistent)
	r.m.streams.Inc()
	defer r.m.streams.Dec()
	r.m.vmStreams.WithLabelValues(string(vm.Name)).Inc()
	defer r.m.vmStreams.WithLabelValues(string(vm.Name)).Dec()
	c := r.counters(vm.Name)
	c.link.Store(&linkInfo{version: hello.GetAgentVersion(), host: hello.GetAgentHost(),
		heartbeat: time.Duration(hello.GetHeartbeatMillis()) * time.Millisecond})
	// Liveness is wall-clock time, as the agent's heartbeat is, also when
	// the receiver's clock is simulated.
	c.since.Store(time.Now().UnixNano())
	c.seen.Store(time.Now().UnixNano())
	defer func() {
		c.left.Store(time.Now().UnixNano())
		c.since.Store(0)
		// No copy runs without its stream: its progress is not shown
		// (it resumes, from where it was, with the next stream).
		r.progressed(vm.Name, c, &ferryv1.Heartbeat{})
	}()

	s.fifo = make(chan *job, r.cfg.Depth)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.sendAcks(stream) }()
	go func() { defer wg.Done(); r.forward(s) }()
	// Recv does not watch a context, so it runs apart: the stream ends as
	// soon as the session fails, which unblocks it.
	recvDone := make(chan error, 1)
	go func() { recvDone <- r.receive(s, stream) }()
	select {
	case err = <-recvDone:
		if errors.Is(err, io.EOF) {
			// The agent closed its side: what it sent becomes durable first.
			s.waitDurable(context.Background(), s.next-1)
			err = nil
		}
	case <-s.ctx.Done():
	}
	if err != nil {
		s.fail(err)
	}
	s.cancel()
	wg.Wait()
	if err := s.failure(); err != nil {
		if errors.Is(err, ErrSuperseded) || errors.Is(err, context.Canceled) {
			r.log.Info("agent disconnected", "vm", vm.Name, "peer", from, "reason", err)
		} else {
			r.log.Warn("agent disconnected", "vm", vm.Name, "peer", from, "err", err)
		}
		return grpcStatus(err)
	}
	r.log.Info("agent disconnected", "vm", vm.Name, "peer", from, "reason", "the stream ended (the agent closed it, or its connection)")
	return nil
}

// checkHello validates what a hello says without looking at the journal.
func (r *Receiver) checkHello(ctx context.Context, h *ferryv1.Hello) (journal.VM, error) {
	if err := ferry.ValidName(h.GetVm()); err != nil {
		return journal.VM{}, fmt.Errorf("%w: vm name: %w", ErrBadHello, err)
	}
	if h.GetBlockSize() != blockdev.BlockSize {
		return journal.VM{}, fmt.Errorf("%w: block size %d, this receiver uses %d", ErrBadHello, h.GetBlockSize(), blockdev.BlockSize)
	}
	if len(h.GetDisks()) == 0 || len(h.GetDisks()) > 64 {
		return journal.VM{}, fmt.Errorf("%w: %d disks (want 1 to 64)", ErrBadHello, len(h.GetDisks()))
	}
	seen := map[string]bool{}
	for _, d := range h.GetDisks() {
		if err := ferry.ValidName(d.GetName()); err != nil {
			return journal.VM{}, fmt.Errorf("%w: disk name: %w", ErrBadHello, err)
		}
		if seen[d.GetName()] {
			return journal.VM{}, fmt.Errorf("%w: disk %q listed twice", ErrBadHello, d.GetName())
		}
		seen[d.GetName()] = true
		if err := CheckDiskSize(d.GetName(), d.GetSizeBytes(), r.cfg.MaxDiskBytes); err != nil {
			return journal.VM{}, fmt.Errorf("%w: %w", ErrBadHello, err)
		}
	}
	if h.GetEpoch() == 0 {
		return journal.VM{}, fmt.Errorf("%w: epoch 0", ErrBadHello)
	}
	name := ferry.VMID(h.GetVm())
	if r.cfg.Authorize != nil {
		if err := r.cfg.Authorize(ctx, name); err != nil {
			return journal.VM{}, fmt.Errorf("%w: vm %s: %w", ErrDenied, name, err)
		}
	}
	return journal.VM{Name: name}, nil
}

// checkEpoch refuses an agent of another replication direction than vm's.
func checkEpoch(h *ferryv1.Hello, vm journal.VM) error {
	if ferry.Epoch(h.GetEpoch()) > vm.Epoch {
		// Started ahead of its reprotect (a machine that boots on its agent
		// right after failback): nothing is accepted until then.
		return fmt.Errorf("%w: vm %s: agent is at epoch %d, the replica at %d: it is accepted once a reprotect raises the VM to epoch %d", ErrEpochAhead, vm.Name, h.GetEpoch(), vm.Epoch, h.GetEpoch())
	}
	if ferry.Epoch(h.GetEpoch()) != vm.Epoch {
		return fmt.Errorf("%w: vm %s: agent is at epoch %d, this receiver accepts epoch %d only (the replication direction changed; re-enroll the agent)", ErrEpoch, vm.Name, h.GetEpoch(), vm.Epoch)
	}
	return nil
}

// openVM returns the VM's journal state, registering it on its first
// stream, and checks that the agent's disks and epoch match it.
func (r *Receiver) openVM(ctx context.Context, h *ferryv1.Hello) (journal.VM, error) {
	name := ferry.VMID(h.GetVm())
	disks := wire.Disks(h.GetDisks())
	vm, err := r.j.VM(ctx, name)
	if errors.Is(err, journal.ErrNoVM) {
		vm = journal.VM{Name: name, Disks: disks, Epoch: ferry.Epoch(h.GetEpoch()), BlockSize: blockdev.BlockSize}
		if err := r.j.CreateVM(ctx, vm); err != nil {
			return journal.VM{}, err
		}
		r.log.Info("vm registered", "vm", name, "disks", len(disks), "epoch", vm.Epoch)
		return r.j.VM(ctx, name)
	}
	if err != nil {
		return journal.VM{}, err
	}
	if err := checkEpoch(h, vm); err != nil {
		return journal.VM{}, err
	}
	if len(disks) != len(vm.Disks) {
		return journal.VM{}, fmt.Errorf("%w: vm %s: agent has %d disks, replica has %d", ErrGeometry, name, len(disks), len(vm.Disks))
	}
	for i, d := range disks {
		if d != vm.Disks[i] {
			return journal.VM{}, fmt.Errorf("%w: vm %s: disk %d is %q of %d bytes, replica has %q of %d bytes", ErrGeometry, name, i, d.Name, d.Size, vm.Disks[i].Name, vm.Disks[i].Size)
		}
	}
	return vm, nil
}

// DefaultMaxDiskBytes is the largest disk a receiver accepts unless
// configured otherwise: 64 TiB, the largest VHDX.
const DefaultMaxDiskBytes = 64 << 40

// CheckDiskSize checks a declared disk size: a positive multiple of the
// block size, at most max bytes (0: DefaultMaxDiskBytes).
func CheckDiskSize(disk string, size uint64, max int64) error {
	if max <= 0 {
		max = DefaultMaxDiskBytes
	}
	if size == 0 || size%blockdev.BlockSize != 0 {
		return fmt.Errorf("disk %q size %d is not a positive multiple of %d", disk, size, blockdev.BlockSize)
	}
	if size > uint64(max) {
		return fmt.Errorf("disk %q of %d bytes is larger than this server accepts (%d bytes; --max-disk-size)", disk, size, max)
	}
	return nil
}

// Command sends a command to the agent of vm's open stream and waits for
// its result. For a shutdown it also waits until everything up to the
// final marker is durable.
func (r *Receiver) Command(ctx context.Context, vm ferry.VMID, cmd *ferryv1.Command) (*ferryv1.CommandResult, error) {
	r.mu.Lock()
	s := r.sessions[vm]
	r.mu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("vm %s: its agent is not connected", vm)
	}
	ch := make(chan *ferryv1.CommandResult, 1)
	if cut := cmd.GetCut(); cut != nil && !cut.GetAbort() {
		r.grant(vm, cut.GetTag())
	}
	if sh := cmd.GetShutdown(); sh != nil && sh.GetTag() != "" {
		r.grant(vm, sh.GetTag())
	}
	s.cmdMu.Lock()
	s.cmdID++
	cmd.Id = s.cmdID
	s.results[cmd.Id] = ch
	s.cmdMu.Unlock()
	select {
	case s.cmds <- cmd:
	case <-s.ctx.Done():
		return nil, fmt.Errorf("vm %s: stream ended before the command was sent", vm)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var res *ferryv1.CommandResult
	select {
	case res = <-ch:
	case <-s.ctx.Done():
		return nil, fmt.Errorf("vm %s: stream ended before the agent answered", vm)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if res.GetOk() && res.GetFinalSeq() > 0 {
		if err := s.waitDurable(ctx, res.GetFinalSeq()); errors.Is(err, errSessionEnded) {
			return nil, fmt.Errorf("vm %s: stream ended before the final marker %d was durable", vm, res.GetFinalSeq())
		} else if err != nil {
			return nil, err
		}
	}
	return res, nil
}

// ReservedTagPrefix starts the tags of multi-VM points, which only the
// receiver asks for.
const ReservedTagPrefix = "group/"

// UnaskedTagPrefix is put in front of a reserved tag the receiver did not
// ask for.
const UnaskedTagPrefix = "unasked:"

// maxGranted bounds the reserved tags remembered per VM.
const maxGranted = 16

func (r *Receiver) grant(vm ferry.VMID, tag string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.granted == nil {
		r.granted = map[ferry.VMID][]string{}
	}
	g := append(r.granted[vm], tag)
	if len(g) > maxGranted {
		g = g[len(g)-maxGranted:]
	}
	r.granted[vm] = g
}

func (r *Receiver) wasGranted(vm ferry.VMID, tag string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.granted[vm], tag)
}

// Fence ends vm's open stream, if any, and waits until it has let go.
// After a change of direction the caller raises the VM's epoch so that
// the agent cannot come back.
func (r *Receiver) Fence(ctx context.Context, vm ferry.VMID) error {
	return r.end(ctx, vm, fmt.Errorf("%w: vm %s failed over", ErrEpoch, vm))
}

// Disconnect ends vm's open stream, if any, as a receiver that no longer
// serves the VM (ErrElsewhere: the agent reconnects, to the VM's owner),
// and waits until it has let go.
func (r *Receiver) Disconnect(ctx context.Context, vm ferry.VMID) error {
	return r.end(ctx, vm, fmt.Errorf("%w: vm %s", ErrElsewhere, vm))
}

func (r *Receiver) end(ctx context.Context, vm ferry.VMID, why error) error {
	r.mu.Lock()
	s := r.sessions[vm]
	r.mu.Unlock()
	if s == nil {
		return nil
	}
	s.fail(why)
	select {
	case <-s.released:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// acquire makes s the only stream of vm, ending an older one first and
// waiting until everything it had verified is committed or dropped.
func (r *Receiver) acquire(ctx context.Context, vm ferry.VMID) (*session, error) {
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return nil, ErrClosed
		}
		old := r.sessions[vm]
		if old == nil {
			s := newSession(ctx, vm)
			r.sessions[vm] = s
			r.mu.Unlock()
			return s, nil
		}
		r.mu.Unlock()
		old.fail(ErrSuperseded)
		select {
		case <-old.released:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(30 * time.Second):
			return nil, status.Errorf(codes.Unavailable, "vm %s: the previous stream did not end within 30s", vm)
		}
	}
}

func (r *Receiver) release(s *session) {
	s.cancel()
	// Everything the session handed to the committer is done once a barrier
	// behind it comes out.
	barrier := make(chan struct{})
	select {
	case r.commit.in <- commitItem{barrier: barrier}:
		select {
		case <-barrier:
		case <-r.ctx.Done():
		}
	case <-r.ctx.Done():
	}
	r.mu.Lock()
	if r.sessions[s.name] == s {
		delete(r.sessions, s.name)
	}
	r.mu.Unlock()
	close(s.released)
}

// peerAddr is a stream's remote address, for the log.
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
