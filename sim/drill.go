// Package sim is Ferry's block-level simulator. A drill runs the real
// agent, process server and gRPC over loopback with real bbolt files; only
// the machines, their disks, the clock, the recovery site's compute and
// networks are simulated. Workloads are seeded, so a drill replays from its
// seed, and the simulator keeps the ground truth of every recovery point
// the agents ask for, so every failed-over disk is checked byte for byte.
package sim

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/mastertarget"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/pkg/objstore"
	"github.com/ferrydr/ferry/pkg/plan"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim/fault"
)

// Config configures a drill.
type Config struct {
	Seed     uint64
	VMs      []VMConfig
	Networks []Network
	// Tick is the step of virtual time (default 1s).
	Tick time.Duration
	// CrashInterval is how often each agent cuts a crash-consistent point
	// (default 1m).
	CrashInterval time.Duration
	// Retention is the process server's recovery point retention (default
	// 24 h).
	Retention time.Duration
	// RPOThreshold is the process server's RPO alert threshold (default
	// 15 min).
	RPOThreshold time.Duration
	// Webhooks are URLs the process server POSTs its events to.
	Webhooks []string
	// Heartbeat is how often the agents say they are alive when idle
	// (0: the agent's default, 5 s). Heartbeats are wall-clock time while
	// the drill's clock runs ahead: a test that watches a lost agent's
	// health sets it short.
	Heartbeat time.Duration
	// AnswerTimeout is how long agents wait for an answer before they take
	// a stream for stalled and connect again (0: the agent's default, 1
	// min); wall-clock time too.
	AnswerTimeout time.Duration
	// AppInterval is how often VMs running the application cut an
	// app-consistent point (0: never).
	AppInterval time.Duration
	// ProcessInterval is how often the process server processes what it
	// received into points (default 3m): between runs, received data waits
	// unprocessed, as it does on a loaded process server.
	ProcessInterval time.Duration
	// ProcessRate is how fast the simulated process server verifies what it
	// received, in bytes/s of virtual time (default 20 MiB/s: a process
	// server busy with many VMs), so that processing shows in jobs.
	ProcessRate int64
	// MasterTarget starts a master target at the primary site, for
	// reprotect and failback.
	MasterTarget bool
	// DirectReverse makes every recovered VM's agent replicate straight to
	// the master target; otherwise VMware-style VMs replicate through the
	// recovery site's process server, which relays them.
	DirectReverse bool
	// LinkRate is the modeled bandwidth between the sites, bytes/s of
	// virtual time (default 12.5 MB/s, 100 Mbit/s): failback charges the
	// bytes moved during downtime to it.
	LinkRate int64
	// Groups are replication groups, created once the initial replication
	// is done; Run cuts their crash-consistent multi-VM points every
	// GroupInterval and app-consistent ones every GroupAppInterval (0:
	// none).
	Groups           []processserver.Group
	GroupInterval    time.Duration
	GroupAppInterval time.Duration
	// PlanActions runs recovery plans' actions (default: Actions, which
	// records them).
	PlanActions processserver.PlanActionRunner
	// EncryptionKey encrypts the process server's journal payloads at rest.
	EncryptionKey []byte
	// Proxy puts a fault.Proxy between each agent and the process server
	// (Drill.Proxies), for tests that attack the network.
	Proxy bool
	// Store, when set, is the process server's object store (its journal
	// shipped to a bucket, retention's bases too).
	Store *objstore.Store
	// Dir holds the process server's data and the agents' state.
	Dir    string
	Logger *slog.Logger
}

// Start is the virtual time every drill starts at.
var Start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Drill is a running simulation.
type Drill struct {
	cfg     Config
	Clock   *clock.Virtual
	PS      *processserver.Server
	Compute *Compute
	MT      *mastertarget.Server
	// WAN carries everything that reaches the master target from the
	// recovery site (the process server's calls, relayed and direct
	// reverse replication): its byte counts are the WAN's.
	WAN          *fault.Proxy
	VMs          []*VM
	Recovery     ferryv1.RecoveryClient
	conn         *grpc.ClientConn
	lastMark     time.Time
	lastApp      time.Time
	lastGroup    time.Time
	lastGroupApp time.Time
	// Actions records the recovery plan actions the process server ran
	// (when Config.PlanActions is not set).
	Actions *Actions
	// Proxies are the fault proxies between each VM's agent and the
	// process server (Config.Proxy), by VM name.
	Proxies map[string]*fault.Proxy
	// GroupHolds are the longest holds of the multi-VM points Run cut.
	GroupHolds  []time.Duration
	lastProcess time.Time
	// QuiesceFailures counts app-consistent points that were not cut.
	QuiesceFailures int
	extra           []*agent.Agent // agents started after New, closed by Close
	psConfig        processserver.Config
	log             *slog.Logger
}

// New starts the process server and one agent per VM, and waits for every
// initial replication to finish.
func New(ctx context.Context, cfg Config) (*Drill, error) {
	if cfg.Tick == 0 {
		cfg.Tick = time.Second
	}
	if cfg.CrashInterval == 0 {
		cfg.CrashInterval = time.Minute
	}
	if cfg.ProcessInterval == 0 {
		cfg.ProcessInterval = 5 * time.Minute
	}
	if cfg.ProcessRate == 0 {
		cfg.ProcessRate = 20 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	d := &Drill{cfg: cfg, Clock: clock.NewVirtual(Start), log: cfg.Logger, Actions: &Actions{}}
	if cfg.PlanActions == nil {
		cfg.PlanActions = d.Actions
	}
	d.Compute = NewCompute(d.Clock, cfg.Networks...)
	mtAddr := ""
	if cfg.MasterTarget {
		mt, err := mastertarget.New(mastertarget.Config{DataDir: filepath.Join(cfg.Dir, "mt"), Listen: "127.0.0.1:0",
			Primary: &primarySite{d: d}, Clock: d.Clock, ProcessInterval: -1, Logger: cfg.Logger, Cost: d.costs()})
		if err != nil {
			return nil, err
		}
		if err := mt.Open(ctx); err != nil {
			return nil, err
		}
		wan, err := fault.Listen(mt.Addr(), cfg.Seed)
		if err != nil {
			mt.Close(ctx)
			return nil, err
		}
		d.MT, d.WAN, mtAddr = mt, wan, wan.Addr()
	}
	d.psConfig = processserver.Config{
		DataDir: filepath.Join(cfg.Dir, "ps"), Listen: "127.0.0.1:0", Logger: cfg.Logger,
		Clock: d.Clock, Compute: d.Compute, ProcessInterval: -1, Cost: d.costs(), Retention: cfg.Retention,
		RPOThreshold: cfg.RPOThreshold, GroupSchedule: -1, PlanActions: cfg.PlanActions, EncryptionKey: cfg.EncryptionKey,
		MasterTarget: mtAddr, Webhooks: cfg.Webhooks, Store: cfg.Store,
	}
	ps, err := processserver.New(d.psConfig)
	if err != nil {
		return nil, err
	}
	if err := ps.Open(ctx); err != nil {
		return nil, err
	}
	d.PS = ps
	d.psConfig.Listen = ps.Addr() // a restart listens where the agents look
	if err := d.setPolicies(ctx); err != nil {
		d.Close()
		return nil, err
	}
	d.conn, err = grpc.NewClient(ps.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		d.Close()
		return nil, err
	}
	d.Recovery = ferryv1.NewRecoveryClient(d.conn)
	for i, vc := range cfg.VMs {
		v := newVM(vc, cfg.Seed*1000+uint64(i))
		v.clock = d.Clock
		target := ps.Addr()
		if cfg.Proxy {
			px, err := fault.Listen(target, cfg.Seed*1000+uint64(i))
			if err != nil {
				d.Close()
				return nil, err
			}
			if d.Proxies == nil {
				d.Proxies = map[string]*fault.Proxy{}
			}
			d.Proxies[vc.Name], target = px, px.Addr()
		}
		acfg := agent.Config{
			VM: vc.Name, StateDir: filepath.Join(cfg.Dir, "agent-"+vc.Name), Target: target,
			DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
			Machine:     vc.Machine, ShutdownMachine: d.shutdownOf(v), Clock: d.Clock, Freeze: v.freeze,
			IgnorePolicy: true, OnGroupHold: func(tag string) { v.setTruth(v.snapshot(tag, d.Clock.Now())) },
			Logger: cfg.Logger.With("vm", vc.Name), Registerer: prometheus.NewRegistry(), Heartbeat: cfg.Heartbeat,
			AnswerTimeout: cfg.AnswerTimeout,
		}
		for j := range v.disks {
			acfg.Disks = append(acfg.Disks, agent.Disk{Name: fmt.Sprintf("disk%d", j), Device: v.disks[j]})
		}
		if v.Agent, err = agent.New(acfg); err != nil {
			d.Close()
			return nil, err
		}
		if err := v.Agent.Open(ctx); err != nil {
			d.Close()
			return nil, err
		}
		d.VMs = append(d.VMs, v)
	}
	if err := d.sync(ctx); err != nil {
		d.Close()
		return nil, fmt.Errorf("initial replication: %w", err)
	}
	// The agent cuts a point where its initial copy ends; nothing was
	// written since.
	for _, v := range d.VMs {
		v.setTruth(v.snapshot("drain-end", d.Clock.Now()))
	}
	d.lastMark, d.lastApp, d.lastProcess = d.Clock.Now(), d.Clock.Now(), d.Clock.Now()
	d.lastGroup, d.lastGroupApp = d.Clock.Now(), d.Clock.Now()
	for _, g := range cfg.Groups {
		if err := d.PS.PutGroup(ctx, g); err != nil {
			d.Close()
			return nil, err
		}
	}
	return d, d.PS.ProcessAll(ctx)
}

// Close stops the agents and the process server.
func (d *Drill) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, v := range d.VMs {
		if v.Agent != nil {
			v.Agent.Close(ctx)
		}
	}
	for _, a := range d.extra {
		a.Close(ctx)
	}
	if d.conn != nil {
		d.conn.Close()
	}
	for _, px := range d.Proxies {
		px.Close()
	}
	var err error
	if d.PS != nil {
		err = d.PS.Close(ctx)
	}
	if d.WAN != nil {
		d.WAN.Close()
	}
	if d.MT != nil {
		d.MT.Close(ctx)
	}
	return err
}

// RestartPS stops the process server, calls between (with the server's
// data directory) while it is down, and starts it again on the same
// address; the agents reconnect and resend what it had not acknowledged.
func (d *Drill) RestartPS(ctx context.Context, between func(dataDir string) error) error {
	if err := d.PS.Close(ctx); err != nil {
		return err
	}
	if between != nil {
		if err := between(d.psConfig.DataDir); err != nil {
			return err
		}
	}
	ps, err := processserver.New(d.psConfig)
	if err != nil {
		return err
	}
	if err := ps.Open(ctx); err != nil {
		return err
	}
	d.PS = ps
	return nil
}

// VM returns the VM of that name.
func (d *Drill) VM(name string) *VM {
	for _, v := range d.VMs {
		if v.Config.Name == name {
			return v
		}
	}
	return nil
}

// sync waits until every running VM's agent has everything acknowledged.
func (d *Drill) sync(ctx context.Context) error {
	for _, v := range d.VMs {
		if v.Agent == nil || !v.Running || v.Agent.Err() != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := v.Agent.WaitSynced(sctx)
		cancel()
		if err != nil {
			return fmt.Errorf("vm %s: %w", v.Config.Name, err)
		}
		// Everything it wrote is acknowledged by the receiver now (an
		// agent that defers to the failback has sent nothing).
		if !v.Agent.Stats().Deferred {
			v.acked = writeNote{At: d.Clock.Now(), Written: v.Written}
		}
	}
	return nil
}

// Run advances virtual time by dur: every tick each running VM writes its
// churn and its agent catches up; crash-consistent points are cut every
// CrashInterval and the process server processes every ProcessInterval.
func (d *Drill) Run(ctx context.Context, dur time.Duration) error {
	for elapsed := time.Duration(0); elapsed < dur; elapsed += d.cfg.Tick {
		d.Clock.Advance(d.cfg.Tick)
		for _, v := range d.VMs {
			if v.Running {
				if err := v.work(ctx, v.Config.Workload.Churn*int64(d.cfg.Tick)/int64(time.Second)); err != nil {
					return fmt.Errorf("vm %s: %w", v.Config.Name, err)
				}
			}
		}
		if err := d.sync(ctx); err != nil {
			return err
		}
		now := d.Clock.Now()
		if now.Sub(d.lastMark) >= d.cfg.CrashInterval {
			d.lastMark = now
			for _, v := range d.VMs {
				if v.Running {
					v.mark(now)
				}
			}
			if err := d.sync(ctx); err != nil {
				return err
			}
		}
		if d.cfg.AppInterval > 0 && now.Sub(d.lastApp) >= d.cfg.AppInterval {
			d.lastApp = now
			for _, v := range d.VMs {
				if v.Running && v.Agent != nil && (v.app != nil || v.Config.FreezeFails) {
					if _, err := v.markApp(ctx, now); err != nil {
						d.QuiesceFailures++
					}
				}
			}
			if err := d.sync(ctx); err != nil {
				return err
			}
		}
		if err := d.groupPoints(ctx, now); err != nil {
			return err
		}
		if now.Sub(d.lastProcess) >= d.cfg.ProcessInterval {
			if err := d.ProcessNow(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// groupPoints cuts the replication groups' multi-VM points that are due.
// A group point that fails (a member cannot hold) is not an error of the
// drill: the process server reports it as an event.
func (d *Drill) groupPoints(ctx context.Context, now time.Time) error {
	for _, k := range []struct {
		app   bool
		every time.Duration
		last  *time.Time
	}{{false, d.cfg.GroupInterval, &d.lastGroup}, {true, d.cfg.GroupAppInterval, &d.lastGroupApp}} {
		if k.every <= 0 || now.Sub(*k.last) < k.every {
			continue
		}
		*k.last = now
		for _, g := range d.cfg.Groups {
			if res, err := d.PS.GroupPoint(ctx, g.Name, k.app); err == nil {
				d.GroupHolds = append(d.GroupHolds, res.MaxHold)
			}
		}
		if err := d.sync(ctx); err != nil {
			return err
		}
	}
	return nil
}

// setPolicies makes the process server's policies say what the drill
// does: the drill cuts the points itself (to keep their ground truth) at
// its own crash and app frequencies.
func (d *Drill) setPolicies(ctx context.Context) error {
	pols, err := d.PS.Policies()
	if err != nil {
		return err
	}
	for _, p := range pols {
		if p.Builtin {
			continue
		}
		p.CrashInterval, p.AppInterval = d.cfg.CrashInterval, d.cfg.AppInterval
		if d.cfg.Retention > 0 {
			p.Retention = d.cfg.Retention
		}
		if d.cfg.RPOThreshold > 0 {
			p.RPOThreshold = d.cfg.RPOThreshold
		}
		if err := d.PS.PutPolicy(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// Actions is the simulator's recovery plan action runner: each action is a
// callback, recorded in the order it ran.
type Actions struct {
	mu  sync.Mutex
	Ran []ActionRun
	// Callback, when set, runs for every action; its error fails the plan.
	Callback func(ActionRun) error
}

// ActionRun is one action a plan ran.
type ActionRun struct {
	Plan      string
	Group     int
	Operation string
	Name      string
}

// Run implements processserver.PlanActionRunner.
func (a *Actions) Run(ctx context.Context, plan string, group int, op string, act plan.Action) (string, error) {
	r := ActionRun{Plan: plan, Group: group, Operation: op, Name: act.Name}
	a.mu.Lock()
	a.Ran = append(a.Ran, r)
	cb := a.Callback
	a.mu.Unlock()
	if cb != nil {
		if err := cb(r); err != nil {
			return "", err
		}
	}
	return "callback ran", nil
}

// Runs returns the actions run so far, in order.
func (a *Actions) Runs() []ActionRun {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]ActionRun(nil), a.Ran...)
}

// ProcessNow has the process server process everything it received, and
// restarts the processing interval.
func (d *Drill) ProcessNow(ctx context.Context) error {
	d.lastProcess = d.Clock.Now()
	if d.MT != nil {
		if err := d.MT.ProcessAll(ctx); err != nil {
			return err
		}
	}
	return d.PS.ProcessAll(ctx)
}

// Outage loses the primary site: every agent stops at once, each VM
// writes unreplicated bytes in its last moments, then stops.
func (d *Drill) Outage(ctx context.Context, unreplicated int64) error {
	for _, v := range d.VMs {
		v.setTruth(v.snapshot("@outage", d.Clock.Now()))
		v.Agent.Abort()
		v.Agent = nil
		if err := v.work(ctx, unreplicated); err != nil {
			return err
		}
		v.setTruth(Mark{Tag: "@end", Time: d.Clock.Now(), Written: v.Written})
		v.Running = false
	}
	return nil
}

func (d *Drill) shutdownOf(v *VM) func(context.Context) error {
	return func(ctx context.Context) error { return v.shutdown(ctx, d.Clock.Now()) }
}

// TruthFor returns the ground truth of a point of vm: the marker's
// snapshot, or for a point cut at the end of the stream ("latest",
// "shutdown") the VM's disks now, which the caller must know to be
// quiescent and fully received.
func (d *Drill) TruthFor(v *VM, p *ferryv1.RecoveryPoint) (Mark, error) {
	if m, ok := v.Truth(p.GetTag()); ok {
		return m, nil
	}
	switch p.GetTag() {
	case ferry.PointLatest, "shutdown":
		if m, ok := v.Truth("@outage"); ok {
			return m, nil
		}
		if v.Running && p.GetTag() == "shutdown" {
			return Mark{}, fmt.Errorf("vm %s still runs: no truth for a shutdown point", v.Config.Name)
		}
		return v.snapshot(p.GetTag(), d.Clock.Now()), nil
	}
	return Mark{}, fmt.Errorf("vm %s: no ground truth for point %d (%q)", v.Config.Name, p.GetId(), p.GetTag())
}

// VerifyInstance compares each disk of a created instance with the ground
// truth byte for byte. It returns the bytes compared.
func (d *Drill) VerifyInstance(ctx context.Context, id string, truth Mark) (int64, error) {
	inst, ok := d.Compute.Instance(id)
	if !ok {
		return 0, fmt.Errorf("no instance %s", id)
	}
	if len(inst.Spec.Disks) != len(truth.Disks) {
		return 0, fmt.Errorf("instance %s has %d disks, truth has %d", id, len(inst.Spec.Disks), len(truth.Disks))
	}
	var n int64
	for i, disk := range inst.Spec.Disks {
		c, err := equalDevices(ctx, disk.Device, truth.Disks[i])
		n += c
		if err != nil {
			return n, fmt.Errorf("instance %s disk %s: %w", id, disk.Name, err)
		}
	}
	return n, nil
}

// equalDevices compares two devices byte for byte.
func equalDevices(ctx context.Context, a, b blockdev.Device) (int64, error) {
	if a.Size() != b.Size() {
		return 0, fmt.Errorf("size %d, want %d", a.Size(), b.Size())
	}
	const chunk = 1 << 20
	ba, bb := make([]byte, chunk), make([]byte, chunk)
	for off := int64(0); off < a.Size(); off += chunk {
		n := min(chunk, a.Size()-off)
		if _, err := a.ReadAt(ctx, ba[:n], off); err != nil {
			return off, err
		}
		if _, err := b.ReadAt(ctx, bb[:n], off); err != nil {
			return off, err
		}
		if !bytes.Equal(ba[:n], bb[:n]) {
			for i := int64(0); i < n; i++ {
				if ba[i] != bb[i] {
					return off, fmt.Errorf("differs from ground truth at offset %d", off+i)
				}
			}
		}
	}
	return a.Size(), nil
}

// TempDir makes a directory for a drill under the system's temp dir.
func TempDir() (string, error) { return os.MkdirTemp("", "ferry-drill-") }

// EqualDevices compares two devices byte for byte; it returns the bytes
// compared.
func EqualDevices(ctx context.Context, a, b blockdev.Device) (int64, error) {
	return equalDevices(ctx, a, b)
}

// costs is the drill's cost model, which the servers charge to the virtual
// clock: processing at ProcessRate, the link at LinkRate (default 12.5 MB/s,
// 100 Mbit/s), the primary's disks at 200 MB/s.
func (d *Drill) costs() costModel {
	link := d.cfg.LinkRate
	if link == 0 {
		link = 12500000
	}
	return costModel{process: d.cfg.ProcessRate, link: link, disk: 200000000}
}

// costModel implements the servers' cost models at fixed rates (bytes/s).
type costModel struct{ process, link, disk int64 }

func at(n, rate int64) (time.Duration, string) {
	return time.Duration(float64(n) / float64(rate) * float64(time.Second)), fmt.Sprintf("modeled at %s/s", cli.Bytes(rate))
}

func (c costModel) Process(n int64) (time.Duration, string) { return at(n, c.process) }
func (c costModel) Link(n int64) (time.Duration, string)    { return at(n, c.link) }
func (c costModel) Disk(n int64) (time.Duration, string)    { return at(n, c.disk) }
