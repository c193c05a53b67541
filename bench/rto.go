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

// RTOConfig configures the RTO benchmark.
type RTOConfig struct {
	Dir      string
	SizesGiB []int64
}

// RTO measures, on the simulator's recovery site with the real process
// server, the wall time to a running test-failover VM and to a committed
// unplanned failover, against disk size (sparse disks with the same
// journal behind them) and with a backlog of unprocessed data.
func RTO(ctx context.Context, cfg RTOConfig) (*Table, error) {
	if cfg.SizesGiB == nil {
		cfg.SizesGiB = []int64{1, 16, 64}
	}
	t := &Table{
		Title: "rto: one VM, 2 virtual minutes at 4 MiB/s, wall time of each job",
		Header: []string{"disk GiB", "test failover (latest-processed) ms", "backlog MiB", "test failover (latest) ms", "  its processing (virtual s)",
			"unplanned failover + commit ms"},
		Values: map[string]float64{},
	}
	var first, last float64
	for i, gib := range cfg.SizesGiB {
		row, unplanned, err := rtoSize(ctx, cfg, gib)
		if err != nil {
			return nil, fmt.Errorf("%d GiB: %w", gib, err)
		}
		t.Rows = append(t.Rows, row)
		ms := float64(unplanned.Microseconds()) / 1000
		t.Values[fmt.Sprintf("%d GiB unplanned failover + commit ms", gib)] = ms
		if i == 0 {
			first = ms
		}
		last = ms
	}
	biggest := cfg.SizesGiB[len(cfg.SizesGiB)-1]
	t.AddTarget(fmt.Sprintf("unplanned failover + commit at %d GiB", biggest), last, 1000, true, "ms")
	if len(cfg.SizesGiB) > 1 {
		t.AddTarget(fmt.Sprintf("unplanned failover + commit, %d GiB / %d GiB", biggest, cfg.SizesGiB[0]), last/first, 1.5, true, "x")
	}
	t.Notes = append(t.Notes, "test failover reads the point through copy-on-write overlays: its start does not depend on disk size",
		"a committed failover materializes the point: only written blocks are copied into sparse images",
		"'latest' processes the backlog first; the simulator charges that at a busy process server's 20 MiB/s of virtual time")
	return t, nil
}

func rtoSize(ctx context.Context, cfg RTOConfig, gib int64) ([]string, time.Duration, error) {
	dir, err := os.MkdirTemp(cfg.Dir, "rto-")
	if err != nil {
		return nil, 0, err
	}
	defer os.RemoveAll(dir)
	vm := sim.VMConfig{Name: "rto-1", Disks: []int64{gib << 30}, Workload: sim.Workload{Churn: 4 << 20, Pattern: sim.Hotspot},
		Machine: &ferryv1.MachineInfo{Os: "linux", Dhcp: proto.Bool(true), SshEnabledAtBoot: true, SshFirewallAllowed: true}}
	d, err := sim.New(ctx, sim.Config{Seed: 1, VMs: []sim.VMConfig{vm}, Networks: sim.DefaultNetworks(), Dir: dir, ProcessInterval: time.Hour})
	if err != nil {
		return nil, 0, err
	}
	defer d.Close()
	if err := d.Run(ctx, 2*time.Minute); err != nil {
		return nil, 0, err
	}
	if err := d.ProcessNow(ctx); err != nil {
		return nil, 0, err
	}
	failover := func(typ ferryv1.FailoverType, point string) (time.Duration, *ferryv1.Job, error) {
		start := time.Now()
		job, err := d.Recovery.Failover(ctx, &ferryv1.FailoverRequest{Vm: "rto-1", Type: typ, Point: point, Network: "drill-isolated"})
		if err == nil && ferry.Outcome(job.GetOutcome()) != ferry.OutcomeSucceeded {
			err = fmt.Errorf("%s", job.GetError())
		}
		return time.Since(start), job, err
	}
	tProcessed, _, err := failover(ferryv1.FailoverType_FAILOVER_TYPE_TEST, ferry.PointLatestProcessed)
	if err != nil {
		return nil, 0, err
	}
	if _, err := d.Recovery.CleanupTest(ctx, &ferryv1.VMRequest{Vm: "rto-1"}); err != nil {
		return nil, 0, err
	}
	// Two more minutes received but not processed.
	if err := d.Run(ctx, 2*time.Minute); err != nil {
		return nil, 0, err
	}
	st, err := d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: "rto-1"})
	if err != nil {
		return nil, 0, err
	}
	backlog := st.GetVms()[0].GetUnprocessedBytes()
	tLatest, job, err := failover(ferryv1.FailoverType_FAILOVER_TYPE_TEST, ferry.PointLatest)
	if err != nil {
		return nil, 0, err
	}
	var charged time.Duration
	for _, s := range job.GetSteps() {
		if s.GetName() == "select recovery point" {
			charged = time.Duration(s.GetEndUnixNano() - s.GetStartUnixNano())
		}
	}
	if _, err := d.Recovery.CleanupTest(ctx, &ferryv1.VMRequest{Vm: "rto-1"}); err != nil {
		return nil, 0, err
	}
	tUnplanned, _, err := failover(ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED, ferry.PointLatestProcessed)
	if err != nil {
		return nil, 0, err
	}
	start := time.Now()
	if job, err := d.Recovery.Commit(ctx, &ferryv1.VMRequest{Vm: "rto-1"}); err != nil || ferry.Outcome(job.GetOutcome()) != ferry.OutcomeSucceeded {
		return nil, 0, fmt.Errorf("commit: %v %s", err, job.GetError())
	}
	tUnplanned += time.Since(start)
	ms := func(d time.Duration) string { return f1(float64(d.Microseconds()) / 1000) }
	return []string{fmt.Sprint(gib), ms(tProcessed), f1(float64(backlog) / (1 << 20)), ms(tLatest), f1(charged.Seconds()), ms(tUnplanned)}, tUnplanned, nil
}
