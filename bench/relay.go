package bench

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ferrydr/ferry"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim"
)

// RelayConfig configures the relay benchmark.
type RelayConfig struct {
	Dir string
	// Minutes of reverse replication at the recovered VM's churn before
	// the failback (default 10).
	Minutes int
	Seed    uint64
}

// relayVM is a VMware VM: its reverse replication is the kind the
// recovery site's process server relays.
func relayVM() sim.VMConfig {
	return sim.VMConfig{Name: "vw-1", Disks: []int64{64 << 20}, Workload: sim.Workload{Churn: 256 << 10, Pattern: sim.Hotspot},
		Machine: &ferryv1.MachineInfo{Os: "linux", MobilityAgentVersion: "9.55", Hypervisor: "vmware", Dhcp: proto.Bool(true),
			SshEnabledAtBoot: true, SshFirewallAllowed: true}}
}

// Relay measures the bytes that cross the WAN to the master target for
// the same reverse replication (same seed, same workload: a VMware VM
// failed over, run at the recovery site, reprotected to its original disks,
// written for Minutes, failed back synchronizing before failover) relayed by
// the recovery site's process server, which compresses it, against the
// recovered VM's agent replicating straight to the master target. Both
// failbacks are checked against the ground truth.
func Relay(ctx context.Context, cfg RelayConfig) (*Table, error) {
	if cfg.Minutes == 0 {
		cfg.Minutes = 10
	}
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	t := &Table{
		Title:  fmt.Sprintf("relay: WAN bytes of %d virtual minutes of reverse replication (and its failback), relayed vs direct", cfg.Minutes),
		Header: []string{"path", "agent sent MiB", "WAN up MiB", "WAN down MiB", "WAN up / sent"},
		Values: map[string]float64{},
	}
	var up [2]int64
	for i, direct := range []bool{false, true} {
		sent, u, down, err := reverseRun(ctx, cfg, direct)
		if err != nil {
			return nil, err
		}
		up[i] = u
		name := "relayed by the recovery-site process server"
		if direct {
			name = "agent straight to the master target"
		}
		t.Rows = append(t.Rows, []string{name, f2(float64(sent) / (1 << 20)), f2(float64(u) / (1 << 20)), f2(float64(down) / (1 << 20)), f2(float64(u) / float64(sent))})
	}
	t.Values["wan bytes saved x"] = float64(up[1]) / float64(up[0])
	t.Notes = append(t.Notes, fmt.Sprintf("the relay sends %.2f× fewer bytes over the WAN; bytes counted on a proxy in front of the master target (everything from the recovery site, gRPC framing and the process server's calls included); the workload's data is ~60%% text, 30%% random, 10%% zeros",
		float64(up[1])/float64(up[0])))
	return t, nil
}

// reverseRun runs the reverse cycle once and returns what the agent sent
// and the WAN bytes each way from the reprotect to the end of the
// failback.
func reverseRun(ctx context.Context, cfg RelayConfig, direct bool) (sent, up, down int64, err error) {
	dir, err := os.MkdirTemp(cfg.Dir, "relay-")
	if err != nil {
		return 0, 0, 0, err
	}
	defer os.RemoveAll(dir)
	d, err := sim.New(ctx, sim.Config{Seed: cfg.Seed, VMs: []sim.VMConfig{relayVM()}, Networks: sim.DefaultNetworks(), Dir: dir,
		Logger: quietLogger(), MasterTarget: true, DirectReverse: direct})
	if err != nil {
		return 0, 0, 0, err
	}
	defer d.Close()
	v := d.VM("vw-1")
	rep := &sim.Report{}
	if err := d.Run(ctx, 2*time.Minute); err != nil {
		return 0, 0, 0, err
	}
	if err := d.Outage(ctx, 0); err != nil {
		return 0, 0, 0, err
	}
	d.Failover(ctx, rep, v, &ferryv1.FailoverRequest{Vm: "vw-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED, Point: ferry.PointLatest})
	d.Commit(ctx, rep, v)
	if err := d.RunRecovered(ctx, v); err != nil {
		return 0, 0, 0, err
	}
	if err := d.Run(ctx, time.Minute); err != nil {
		return 0, 0, 0, err
	}
	up0, down0 := d.WAN.Bytes()
	d.Reprotect(ctx, rep, v, ferry.LocationOriginal, "")
	if len(rep.Failures) == 0 {
		if err := d.Run(ctx, time.Duration(cfg.Minutes)*time.Minute); err != nil {
			return 0, 0, 0, err
		}
		if err := d.ProcessNow(ctx); err != nil {
			return 0, 0, 0, err
		}
		a := v.Agent
		d.Failback(ctx, rep, v, ferry.SyncBefore)
		sent = a.Stats().SentBytes
	}
	if len(rep.Failures) > 0 {
		return 0, 0, 0, fmt.Errorf("reverse replication (direct %v): %v", direct, rep.Failures)
	}
	up1, down1 := d.WAN.Bytes()
	if sent == 0 {
		return 0, 0, 0, fmt.Errorf("the recovered VM's agent sent nothing")
	}
	return sent, up1 - up0, down1 - down0, nil
}
