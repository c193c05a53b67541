package sim

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cli"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// primarySite is the primary site as the master target sees it in a drill.
type primarySite struct{ d *Drill }

func (p *primarySite) vm(name string) (*VM, error) {
	if v := p.d.VM(name); v != nil {
		return v, nil
	}
	return nil, fmt.Errorf("no VM %s at the primary site", name)
}

func (p *primarySite) OriginalDisks(ctx context.Context, name string, disks []ferry.Disk) ([]blockdev.Device, error) {
	v, err := p.vm(name)
	if err != nil {
		return nil, err
	}
	out := make([]blockdev.Device, len(v.disks))
	for i, d := range v.disks {
		out[i] = d
	}
	return out, nil
}

func (p *primarySite) CreateDisks(ctx context.Context, name string, disks []ferry.Disk) ([]blockdev.Device, []string, error) {
	v, err := p.vm(name)
	if err != nil {
		return nil, nil, err
	}
	v.alternate = nil
	var devs []blockdev.Device
	var where []string
	for _, d := range disks {
		m := blockdev.NewMemory(d.Size)
		v.alternate = append(v.alternate, m)
		devs, where = append(devs, m), append(where, "alternate:"+string(d.Name))
	}
	return devs, where, nil
}

// Start runs the primary VM again, on its own disks or the alternate ones,
// unprotected until it is reprotected.
func (p *primarySite) Start(ctx context.Context, name string, location ferry.Location) error {
	v, err := p.vm(name)
	if err != nil {
		return err
	}
	v.active = nil
	src := v.disks
	if location == ferry.LocationAlternate {
		src = v.alternate
	}
	for _, d := range src {
		v.active = append(v.active, d)
	}
	v.Agent, v.Running = nil, true
	return nil
}

// RunRecovered makes the VM run on its failed-over instance at the
// recovery site, unprotected.
func (d *Drill) RunRecovered(ctx context.Context, v *VM) error {
	st := d.status(ctx, v.Config.Name)
	inst, ok := d.Compute.Instance(st.GetInstance())
	if !ok || inst.Deleted {
		return fmt.Errorf("vm %s has no recovered instance", v.Config.Name)
	}
	v.active = nil
	for _, disk := range inst.Spec.Disks {
		v.active = append(v.active, disk.Device)
	}
	v.Agent, v.Running = nil, true
	return nil
}

// StartAgent starts an agent for the VM where it runs now, replicating to
// target with the given epoch, and waits until it is in sync. Its state
// is in the VM's agent directory (name "": the one the drill started
// with, else one of that name).
func (d *Drill) StartAgent(ctx context.Context, v *VM, target string, epoch uint64, name string) error {
	dir := "agent-" + v.Config.Name
	if name != "" {
		dir += "-" + name
	}
	cfg := agent.Config{
		VM: v.Config.Name, StateDir: filepath.Join(d.cfg.Dir, dir), Target: target, Epoch: epoch,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Machine:     v.Config.Machine, ShutdownMachine: d.shutdownOf(v), Clock: d.Clock, IgnorePolicy: true, Freeze: v.freeze,
		OnGroupHold: func(tag string) { v.setTruth(v.snapshot(tag, d.Clock.Now())) },
		Logger:      d.log.With("vm", v.Config.Name, "agent", name), Registerer: prometheus.NewRegistry(), Heartbeat: d.cfg.Heartbeat,
		AnswerTimeout: d.cfg.AnswerTimeout,
	}
	for i, dev := range v.active {
		cfg.Disks = append(cfg.Disks, agent.Disk{Name: fmt.Sprintf("disk%d", i), Device: dev})
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	if err := a.Open(ctx); err != nil {
		return err
	}
	v.Agent = a
	d.extra = append(d.extra, a)
	return d.sync(ctx)
}

// differingBlocks counts the 4 KiB blocks where two sets of disks differ.
func differingBlocks(ctx context.Context, a []blockdev.Device, b []*blockdev.Memory) int64 {
	var n int64
	ba, bb := make([]byte, blockdev.BlockSize), make([]byte, blockdev.BlockSize)
	for i := range a {
		for off := int64(0); off < a[i].Size(); off += blockdev.BlockSize {
			a[i].ReadAt(ctx, ba, off)
			b[i].ReadAt(ctx, bb, off)
			if string(ba) != string(bb) {
				n++
			}
		}
	}
	return n
}

// FullCycleDrill runs the seed's four stages with workloads at every stage
// that allows writes: (1) the primary site is lost with writes it never
// replicated, every VM fails over unplanned and commits; (2) the recovered
// VMs run, then are reprotected to the master target (the first VMs to
// their original location, where only what differs is sent, the last to an
// alternate location); (3) they fail back, synchronizing before failover
// (the first and last) or during failover only (the second), and commit;
// (4) they are reprotected forward and replicate to the process server
// again, verified by a test failover. After every stage the disks that are
// now primary are compared with the ground truth of the point used.
func FullCycleDrill(ctx context.Context, cfg Config, minutes int) (*Report, error) {
	if cfg.VMs == nil {
		cfg.VMs = DefaultVMs()
	}
	if cfg.Networks == nil {
		cfg.Networks = DefaultNetworks()
	}
	cfg.MasterTarget = true
	rep := &Report{Seed: cfg.Seed, Scenario: "full-cycle"}
	d, err := New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if err := d.Run(ctx, time.Duration(minutes)*time.Minute); err != nil {
		return rep, err
	}

	// Stage 1: failover.
	const unreplicated = 256 << 10
	if err := d.Outage(ctx, unreplicated); err != nil {
		return rep, err
	}
	rep.note("stage 1: primary site lost; each VM wrote %s its agent never sent", cli.Bytes(unreplicated))
	for _, v := range d.VMs {
		e := d.Failover(ctx, rep, v, &ferryv1.FailoverRequest{Vm: v.Config.Name, Type: ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED, Point: ferry.PointLatest})
		if e.Failed != "" {
			return rep, nil
		}
		d.Commit(ctx, rep, v)
		if err := d.RunRecovered(ctx, v); err != nil {
			return rep, err
		}
	}
	if err := d.Run(ctx, time.Minute); err != nil {
		return rep, err
	}

	// Stage 2: reprotect to the master target.
	for i, v := range d.VMs {
		loc := ferry.LocationOriginal
		if i == len(d.VMs)-1 {
			loc = ferry.LocationAlternate
		}
		sync := ferry.SyncMode("")
		if i == 1 {
			sync = ferry.SyncDuring // this VM fails back synchronizing during failover only
		}
		if e := d.Reprotect(ctx, rep, v, loc, sync); e.Failed != "" {
			return rep, nil
		}
	}
	if err := d.Run(ctx, 2*time.Minute); err != nil {
		return rep, err
	}
	if err := d.ProcessNow(ctx); err != nil {
		return rep, err
	}

	// Stage 3: failback.
	for i, v := range d.VMs {
		sync := ferry.SyncBefore
		if i == 1 {
			sync = ferry.SyncDuring
		}
		if e := d.Failback(ctx, rep, v, sync); e.Failed != "" {
			return rep, nil
		}
		old := v.recoveredAgent
		d.Commit(ctx, rep, v)
		if old != nil {
			select {
			case <-old.Done():
				rep.Entries[len(rep.Entries)-1].Notes = append(rep.Entries[len(rep.Entries)-1].Notes, "the recovered VM's agent was refused: "+old.Err().Error())
			case <-time.After(30 * time.Second):
				rep.fail("%s: the recovered VM's agent was not refused after failback", v.Config.Name)
			}
		}
	}

	// Stage 4: reprotect forward.
	for _, v := range d.VMs {
		if e := d.Reprotect(ctx, rep, v, "", ""); e.Failed != "" {
			return rep, nil
		}
	}
	if err := d.Run(ctx, 2*time.Minute); err != nil {
		return rep, err
	}
	if err := d.ProcessNow(ctx); err != nil {
		return rep, err
	}
	for _, v := range d.VMs {
		d.TestFailover(ctx, rep, v, ferry.PointLatestProcessed, "drill-isolated")
		d.CleanupTest(ctx, rep, v)
	}
	rep.note("stage 4: forward replication resumed; each VM's latest processed point verified by a test failover")
	return rep, nil
}

// Reprotect reprotects a VM: to the master target after a committed
// failover (location original or alternate), or forward after a committed
// failback. It starts the agent on the side that now runs the VM, waits
// for its resync and reports what it sent against what differed.
//
// sync during reprotects for a failback that synchronizes during
// failover only: the agent must send nothing until then.
func (d *Drill) Reprotect(ctx context.Context, rep *Report, v *VM, location ferry.Location, sync ferry.SyncMode) *Entry {
	b := d.reprotectBaseline(ctx, v, location)
	b.during = sync == ferry.SyncDuring
	job, err := d.Recovery.Reprotect(ctx, &ferryv1.ReprotectRequest{Vm: v.Config.Name, Location: string(location), Sync: string(sync)})
	e := d.record(rep, v, b.action, job, err)
	if e.Failed != "" {
		return e
	}
	d.afterReprotect(ctx, rep, v, e, b)
	return e
}

// reprotectBaseline is what a reprotect of a VM should send: the blocks
// where the VM's disks differ from the target's replica.
type reprotectBaseline struct {
	forward bool
	action  string
	replica []*blockdev.Memory
	differ  int64
	// during: the failback synchronizes during failover only.
	during bool
}

func (d *Drill) reprotectBaseline(ctx context.Context, v *VM, location ferry.Location) reprotectBaseline {
	st := d.status(ctx, v.Config.Name)
	b := reprotectBaseline{forward: st.GetState() == "failback-committed"}
	// What the target's replica holds: the primary's own disks (reverse,
	// original location), or what the process server had when the primary
	// site was lost (forward).
	switch {
	case b.forward:
		o, _ := v.Truth("@outage")
		b.replica = o.Disks
	case location == ferry.LocationOriginal || location == "":
		b.replica = v.disks
	}
	if b.replica != nil {
		b.differ = differingBlocks(ctx, v.active, b.replica)
	}
	b.action = "reprotect to the master target (" + orDefault(string(location), string(ferry.LocationOriginal)) + " location)"
	if b.forward {
		b.action = "reprotect forward to the process server"
	}
	return b
}

// afterReprotect starts the agent of a reprotected VM where it runs now,
// waits for its resync and checks what it sent against what differed.
func (d *Drill) afterReprotect(ctx context.Context, rep *Report, v *VM, e *Entry, b reprotectBaseline) {
	st := d.status(ctx, v.Config.Name)
	target := d.ReverseTarget(v)
	if b.forward {
		target = d.PS.Addr()
	}
	if err := d.StartAgent(ctx, v, target, st.GetEpoch(), fmt.Sprintf("epoch%d", st.GetEpoch())); err != nil {
		e.Failed = err.Error()
		rep.fail("%s %s: %v", v.Config.Name, b.action, err)
		return
	}
	if !b.forward {
		v.recoveredAgent = v.Agent
		if d.Relayed(v) {
			e.Notes = append(e.Notes, "reverse replication relayed by the recovery site's process server (verified, compressed on the WAN)")
		}
	}
	as := v.Agent.Stats()
	var total int64
	for _, dev := range v.active {
		total += dev.Size()
	}
	e.Notes = append(e.Notes, fmt.Sprintf("resync sent %s of data and received %s of hashes for %s of disks", cli.Bytes(as.SentBytes), cli.Bytes(as.HashBytes), cli.Bytes(total)))
	if b.during {
		e.Verified = "synchronize during failover only: no checksum pre-sync, nothing sent before the failback"
		if as.SentBytes != 0 || as.HashBytes != 0 || !as.Deferred {
			e.Failed = "the agent of a VM reprotected to synchronize during failover only sent data or hashes"
			rep.fail("%s: %s", v.Config.Name, e.Failed)
		}
		return
	}
	if b.replica == nil {
		e.Verified = "alternate location: new disks, everything copied"
		return
	}
	want := b.differ * blockdev.BlockSize
	ratio := float64(as.SentBytes+as.HashBytes) / float64(want+as.HashBytes)
	e.Verified = fmt.Sprintf("%d blocks (%s) differed from the target's replica; transfer %.3f× of them plus the hashes", b.differ, cli.Bytes(want), ratio)
	if ratio > 1.1 {
		e.Failed = "reprotect sent more than 1.1× what differs"
		rep.fail("%s: %s (%.3f×)", v.Config.Name, e.Failed, ratio)
	}
}

// ReverseTarget is where a recovered VM's agent replicates after a
// reprotect to the primary site: a VMware-style VM's to the recovery
// site's process server, which relays it to the master target (unless
// Config.DirectReverse), any other straight to the master target over the
// WAN.
func (d *Drill) ReverseTarget(v *VM) string {
	if d.Relayed(v) {
		return d.PS.Addr()
	}
	return d.WAN.Addr()
}

// Relayed reports whether v's reverse replication goes through the
// recovery site's process server.
func (d *Drill) Relayed(v *VM) bool {
	m := v.Config.Machine
	return !d.cfg.DirectReverse && (m.GetHypervisor() == "vmware" || m.GetPhysical() || m.GetProtectedAsPhysical())
}

// Failback fails a reprotected VM back and checks the disks now primary
// equal the recovered VM's disks at the point used.
func (d *Drill) Failback(ctx context.Context, rep *Report, v *VM, sync ferry.SyncMode) *Entry {
	if v.recoveredAgent != nil {
		v.sentBeforeFailback = v.recoveredAgent.Stats().SentBytes
	}
	// The recovered VM keeps writing until it is shut down: a final delta
	// that no tick synchronized.
	if err := v.work(ctx, v.Config.Workload.Churn/2); err != nil {
		e := &Entry{VM: v.Config.Name, Action: "failback", Failed: err.Error()}
		rep.Entries = append(rep.Entries, e)
		rep.fail("%s failback: %v", v.Config.Name, err)
		return e
	}
	job, err := d.Recovery.Failback(ctx, &ferryv1.FailbackRequest{Vm: v.Config.Name, Sync: string(sync), Point: ferry.PointLatest})
	e := d.record(rep, v, "failback (synchronize "+string(sync)+" failover)", job, err)
	if e.Failed != "" {
		return e
	}
	d.checkFailback(ctx, rep, v, e, job)
	return e
}

// checkFailback checks that the disks now primary equal the recovered VM's
// disks when it shut down, and reports the failback's downtime.
func (d *Drill) checkFailback(ctx context.Context, rep *Report, v *VM, e *Entry, job *ferryv1.Job) {
	truth, ok := v.Truth("shutdown")
	if !ok {
		e.Failed = "no ground truth of the recovered VM at shutdown"
		rep.fail("%s failback: %s", v.Config.Name, e.Failed)
		return
	}
	var n int64
	for i, dev := range v.active {
		c, err := equalDevices(ctx, dev, truth.Disks[i])
		n += c
		if err != nil {
			e.Failed = fmt.Sprintf("primary disk%d: %v", i, err)
			rep.fail("%s failback: %s", v.Config.Name, e.Failed)
			return
		}
	}
	e.Verified = fmt.Sprintf("ok: all %s of the primary's disks equal the recovered VM at its final point", cli.Bytes(n))
	for _, s := range job.GetSteps() {
		switch s.GetName() {
		case "master target: shut down recovered VM", "master target: receive final data", "master target: process final data", "master target: apply point to primary disks", "master target: start primary VM":
			e.Downtime += time.Duration(s.GetEndUnixNano() - s.GetStartUnixNano())
		}
	}
	if rs := v.recoveredAgent; rs != nil {
		e.DowntimeBytes = rs.Stats().SentBytes - v.sentBeforeFailback
	}
	for _, s := range job.GetSteps() {
		if s.GetName() == "record failback" || s.GetName() == "master target: synchronize before shutdown" {
			e.Notes = append(e.Notes, s.GetDetail())
		}
	}
}
