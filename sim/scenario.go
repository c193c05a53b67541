package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/processserver/client"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

const mib = 1 << 20

// DefaultNetworks are the recovery site's networks in the default drill.
func DefaultNetworks() []Network {
	return []Network{
		{Name: "prod", PublicIP: true, AllowedPorts: []int{22, 3389}},
		{Name: "drill-isolated", Isolated: true},
	}
}

// DefaultVMs are three machines with different workloads and settings: a
// Linux web server, a Windows database server, and an old Windows
// application server that needs failover processing and has settings that
// would block RDP after failover.
func DefaultVMs() []VMConfig {
	return []VMConfig{
		{
			Name: "web-1", Disks: []int64{32 * mib, 16 * mib},
			Workload: Workload{Churn: 256 << 10, Pattern: Uniform},
			Machine: &ferryv1.MachineInfo{Os: "linux", MobilityAgentVersion: "9.55", Hypervisor: "hyperv", Dhcp: proto.Bool(true),
				SshEnabledAtBoot: true, SshFirewallAllowed: true},
		},
		{
			Name: "db-1", Disks: []int64{32 * mib, 64 * mib},
			Workload: Workload{Churn: 512 << 10, Pattern: Hotspot},
			Machine: &ferryv1.MachineInfo{Os: "windows", MobilityAgentVersion: "9.55", Hypervisor: "hyperv", Dhcp: proto.Bool(true),
				BootDrivers: []string{"storvsc", "vmbus", "storflt", "intelide", "atapi"}, RdpEnabled: true,
				RdpFirewallProfiles: []string{"public", "private", "domain"}, SanPolicy: "OnlineAll"},
		},
		{
			Name: "app-1", Disks: []int64{32 * mib},
			Workload: Workload{Churn: 128 << 10, Pattern: Log},
			Machine: &ferryv1.MachineInfo{Os: "windows", MobilityAgentVersion: "9.7", Hypervisor: "vmware", Dhcp: proto.Bool(false),
				BootDrivers: []string{"storvsc", "vmbus"}, RdpEnabled: true, RdpFirewallProfiles: []string{"domain"},
				SanPolicy: "OfflineShared", PendingUpdates: true},
		},
	}
}

// FailoverDrill is the default scenario: replicate three VMs, run a test
// failover of each on an isolated network and verify it while replication
// goes on, clean up, lose the primary site, fail over unplanned to the
// latest processed point, change to the latest point, and commit. Every
// failed-over disk is compared with the ground truth of its point.
func FailoverDrill(ctx context.Context, cfg Config, minutes int) (*Report, error) {
	if cfg.VMs == nil {
		cfg.VMs = DefaultVMs()
	}
	if cfg.Networks == nil {
		cfg.Networks = DefaultNetworks()
	}
	rep := &Report{Seed: cfg.Seed, Scenario: "failover"}
	d, err := New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	rep.note("%d VMs replicated (initial replication done)", len(d.VMs))
	if err := d.Run(ctx, time.Duration(minutes)*time.Minute); err != nil {
		return rep, err
	}
	rep.note("ran %d virtual minutes: crash-consistent points every %s, processing every %s", minutes, d.cfg.CrashInterval, d.cfg.ProcessInterval)

	// Test failover of every VM; replication of production goes on.
	pointsBefore := d.pointCounts(ctx)
	for _, v := range d.VMs {
		d.TestFailover(ctx, rep, v, ferry.PointLatestProcessed, "drill-isolated")
	}
	if err := d.Run(ctx, 2*time.Minute); err != nil {
		return rep, err
	}
	if err := d.PS.ProcessAll(ctx); err != nil {
		return rep, err
	}
	after := d.pointCounts(ctx)
	for _, v := range d.VMs {
		n := v.Config.Name
		if after[n] <= pointsBefore[n] {
			rep.fail("%s: no new recovery point while its test failover ran (%d before, %d after)", n, pointsBefore[n], after[n])
		} else {
			rep.note("%s: %d new recovery points arrived while its test failover ran", n, after[n]-pointsBefore[n])
		}
	}
	for _, v := range d.VMs {
		d.CleanupTest(ctx, rep, v)
	}
	// Three more minutes of churn after the last processing run: that
	// much data is received but not processed when the site is lost.
	if err := d.ProcessNow(ctx); err != nil {
		return rep, err
	}
	if err := d.Run(ctx, 3*time.Minute); err != nil {
		return rep, err
	}

	// The primary site is lost.
	if err := d.Outage(ctx, 0); err != nil {
		return rep, err
	}
	rep.note("primary site lost at %s virtual; unprocessed data waits at the process server", d.Clock.Now().Sub(Start).Round(time.Second))
	for _, v := range d.VMs {
		e := d.Failover(ctx, rep, v, &ferryv1.FailoverRequest{Vm: v.Config.Name, Type: ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED, Point: ferry.PointLatestProcessed})
		if e.Failed != "" {
			continue
		}
		d.ChangePoint(ctx, rep, v, ferry.PointLatest)
		d.Commit(ctx, rep, v)
	}
	return rep, nil
}

func (d *Drill) pointCounts(ctx context.Context) map[string]int {
	out := map[string]int{}
	resp, err := d.Recovery.ListVMs(ctx, &ferryv1.ListVMsRequest{})
	if err != nil {
		return out
	}
	for _, vm := range resp.GetVms() {
		out[vm.GetName()] = int(vm.GetPointCount())
	}
	return out
}

// loss measures what a point lacks against the writes the VM's agent had
// acknowledged when the job started (or when the VM was lost): their bytes
// and the age of the oldest of them; what the VM wrote that was never
// acknowledged is counted apart. The point's age is the age of the newest
// write it holds.
func (d *Drill) loss(v *VM, e *Entry, truth Mark) {
	end, endWritten := d.Clock.Now(), v.Written
	if e.Job != nil && e.Job.GetStartUnixNano() != 0 {
		end = time.Unix(0, e.Job.GetStartUnixNano())
	}
	start := end
	if m, ok := v.Truth("@end"); ok && !v.Running {
		// The VM was lost: what it wrote up to then is what is at stake.
		end, endWritten = m.Time, m.Written
	}
	acked := min(v.acked.Written, endWritten)
	e.LossBytes = max(0, acked-truth.Written)
	e.LossSeconds = 0
	if e.LossBytes > 0 {
		if at := v.oldestAfter(truth.Written); !at.IsZero() {
			e.LossSeconds = end.Sub(at).Seconds()
		}
	}
	e.UnackedBytes = max(0, endWritten-max(acked, truth.Written))
	if at := v.newestIn(truth.Written); !at.IsZero() {
		e.PointAge = start.Sub(at)
	}
}

// verify checks an instance against the truth of its point.
func (d *Drill) verify(ctx context.Context, rep *Report, v *VM, e *Entry, instance string) {
	truth, err := d.TruthFor(v, e.Point)
	if err != nil {
		e.Failed = err.Error()
		rep.fail("%s %s: %v", v.Config.Name, e.Action, err)
		return
	}
	n, err := d.VerifyInstance(ctx, instance, truth)
	if err != nil {
		e.Failed = err.Error()
		rep.fail("%s %s: %v", v.Config.Name, e.Action, err)
		return
	}
	e.Verified = fmt.Sprintf("ok: all %s of the VM's disks equal the ground truth at point %d", cli.Bytes(n), e.Point.GetId())
	d.loss(v, e, truth)
}

func (d *Drill) status(ctx context.Context, vm string) *ferryv1.VMStatus {
	resp, err := d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: vm})
	if err != nil || len(resp.GetVms()) == 0 {
		return nil
	}
	return resp.GetVms()[0]
}

func (d *Drill) record(rep *Report, v *VM, action string, job *ferryv1.Job, err error) *Entry {
	e := &Entry{VM: v.Config.Name, Action: action, Job: job}
	rep.Entries = append(rep.Entries, e)
	switch {
	case err != nil:
		e.Failed = err.Error()
	case ferry.Outcome(job.GetOutcome()) != ferry.OutcomeSucceeded:
		e.Failed = "job failed: " + job.GetError()
	}
	if e.Failed != "" {
		rep.fail("%s %s: %s", v.Config.Name, action, e.Failed)
	}
	if job.GetPoint() != nil {
		e.Point = job.GetPoint()
		e.PointAge = time.Duration(job.GetStartUnixNano() - e.Point.GetTimeUnixNano())
	}
	return e
}

// Failover runs a failover through the recovery API and verifies the VM it
// created.
func (d *Drill) Failover(ctx context.Context, rep *Report, v *VM, req *ferryv1.FailoverRequest) *Entry {
	job, err := d.Recovery.Failover(ctx, req)
	action := fmt.Sprintf("%s failover (%s)", typeName(req.GetType()), orDefault(req.GetPoint(), ferry.PointLatest))
	e := d.record(rep, v, action, job, err)
	if e.Failed != "" {
		return e
	}
	if st := d.status(ctx, v.Config.Name); st != nil {
		d.verify(ctx, rep, v, e, st.GetInstance())
	}
	return e
}

// TestFailover runs a test failover, verifies it, and writes to the test
// VM's disks as a test would.
func (d *Drill) TestFailover(ctx context.Context, rep *Report, v *VM, point, network string) *Entry {
	e := d.Failover(ctx, rep, v, &ferryv1.FailoverRequest{Vm: v.Config.Name, Type: ferryv1.FailoverType_FAILOVER_TYPE_TEST, Point: point, Network: network})
	if e.Failed != "" {
		return e
	}
	st := d.status(ctx, v.Config.Name)
	inst, _ := d.Compute.Instance(st.GetInstance())
	if !inst.Network.Isolated {
		e.Failed = "the test VM is on a network that is not isolated"
		rep.fail("%s: %s", v.Config.Name, e.Failed)
	}
	// The test exercises the VM: its writes must stay out of the replica.
	rng := rand.New(rand.NewPCG(d.cfg.Seed, 77))
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	for _, disk := range inst.Spec.Disks {
		for i := 0; i < 8; i++ {
			off := bootArea + rng.Int64N((disk.Device.Size()-bootArea-int64(len(buf)))/blockdev.BlockSize)*blockdev.BlockSize
			disk.Device.WriteAt(ctx, buf, off)
		}
	}
	e.Notes = append(e.Notes, fmt.Sprintf("test VM %s on isolated network %s wrote %s to its disks", inst.ID, inst.Network.Name, cli.Bytes(int64(len(buf)*8*len(inst.Spec.Disks)))))
	return e
}

// CleanupTest deletes the test VM and checks its point still equals the
// ground truth, untouched by the test's writes.
func (d *Drill) CleanupTest(ctx context.Context, rep *Report, v *VM) *Entry {
	st := d.status(ctx, v.Config.Name)
	job, err := d.Recovery.CleanupTest(ctx, &ferryv1.VMRequest{Vm: v.Config.Name})
	e := d.record(rep, v, "cleanup test failover", job, err)
	if e.Failed != "" || st == nil {
		return e
	}
	if inst, ok := d.Compute.Instance(st.GetInstance()); !ok || !inst.Deleted {
		e.Failed = "the test VM still exists"
		rep.fail("%s: %s", v.Config.Name, e.Failed)
		return e
	}
	// Re-read the point the test used: the test's writes are gone.
	resp, err := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: v.Config.Name})
	if err != nil {
		e.Failed = err.Error()
		return e
	}
	for _, p := range resp.GetPoints() {
		if p.GetId() != st.GetPointId() {
			continue
		}
		truth, err := d.TruthFor(v, p)
		if err != nil {
			e.Failed = err.Error()
			rep.fail("%s cleanup: %v", v.Config.Name, err)
			return e
		}
		if err := d.verifyExport(ctx, v, p, truth); err != nil {
			e.Failed = err.Error()
			rep.fail("%s cleanup: %v", v.Config.Name, err)
			return e
		}
		e.Verified = fmt.Sprintf("ok: test VM deleted; point %d re-read after the test still equals the ground truth", p.GetId())
	}
	return e
}

// verifyExport exports every disk of a point over the recovery API and
// compares it with the truth.
func (d *Drill) verifyExport(ctx context.Context, v *VM, p *ferryv1.RecoveryPoint, truth Mark) error {
	for i := range truth.Disks {
		var img blockdev.Device
		if _, err := client.ExportDisk(ctx, d.conn, v.Config.Name, fmt.Sprint(p.GetId()), fmt.Sprintf("disk%d", i), func(size int64) (blockdev.Device, error) {
			img = blockdev.NewMemory(size)
			return img, nil
		}); err != nil {
			return fmt.Errorf("export point %d disk%d: %w", p.GetId(), i, err)
		}
		if _, err := equalDevices(ctx, img, truth.Disks[i]); err != nil {
			return fmt.Errorf("point %d disk%d: %w", p.GetId(), i, err)
		}
	}
	return nil
}

// ChangePoint moves a failed-over VM to another point and verifies it.
func (d *Drill) ChangePoint(ctx context.Context, rep *Report, v *VM, point string) *Entry {
	job, err := d.Recovery.ChangePoint(ctx, &ferryv1.ChangePointRequest{Vm: v.Config.Name, Point: point})
	e := d.record(rep, v, "change recovery point ("+point+")", job, err)
	if e.Failed == "" {
		if st := d.status(ctx, v.Config.Name); st != nil {
			d.verify(ctx, rep, v, e, st.GetInstance())
		}
	}
	return e
}

// Commit commits the failover and checks that no point is left and that
// the point can no longer change.
func (d *Drill) Commit(ctx context.Context, rep *Report, v *VM) *Entry {
	job, err := d.Recovery.Commit(ctx, &ferryv1.VMRequest{Vm: v.Config.Name})
	e := d.record(rep, v, "commit", job, err)
	if e.Failed != "" {
		return e
	}
	resp, err := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: v.Config.Name})
	if err != nil || len(resp.GetPoints()) != 0 {
		e.Failed = fmt.Sprintf("%d recovery points left after commit (%v)", len(resp.GetPoints()), err)
		rep.fail("%s commit: %s", v.Config.Name, e.Failed)
		return e
	}
	if _, err := d.Recovery.ChangePoint(ctx, &ferryv1.ChangePointRequest{Vm: v.Config.Name, Point: ferry.PointLatest}); err == nil {
		e.Failed = "change-point after commit was accepted"
		rep.fail("%s commit: %s", v.Config.Name, e.Failed)
		return e
	} else {
		e.Verified = "ok: no recovery point left; change-point refused: " + err.Error()
	}
	return e
}

func typeName(t ferryv1.FailoverType) string {
	switch t {
	case ferryv1.FailoverType_FAILOVER_TYPE_TEST:
		return "test"
	case ferryv1.FailoverType_FAILOVER_TYPE_PLANNED:
		return "planned"
	case ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED:
		return "unplanned"
	}
	return "unknown"
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
