package sim_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim"
)

// BenchmarkTestFailoverStart measures the wall time from asking for a test
// failover to a running test VM, for sparse disks of growing size with the
// same journal behind them: the disks are copy-on-write overlays, so the
// time must not grow with the disk.
func BenchmarkTestFailoverStart(b *testing.B) {
	for _, gib := range []int64{1, 16, 64} {
		b.Run(fmt.Sprintf("disk=%dGiB", gib), func(b *testing.B) {
			ctx := context.Background()
			vm := sim.VMConfig{Name: "big-1", Disks: []int64{gib << 30}, Workload: sim.Workload{Churn: 1 << 20, Pattern: sim.Hotspot},
				Machine: &ferryv1.MachineInfo{Os: "linux", Dhcp: proto.Bool(true), SshEnabledAtBoot: true, SshFirewallAllowed: true}}
			d, err := sim.New(ctx, sim.Config{Seed: 9, VMs: []sim.VMConfig{vm}, Networks: sim.DefaultNetworks(), Dir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			if err := d.Run(ctx, 2*time.Minute); err != nil {
				b.Fatal(err)
			}
			if err := d.ProcessNow(ctx); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				job, err := d.Recovery.Failover(ctx, &ferryv1.FailoverRequest{Vm: "big-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_TEST,
					Point: "latest-processed", Network: "drill-isolated"})
				if err != nil || job.GetOutcome() != "succeeded" {
					b.Fatalf("test failover: %v %s", err, job.GetError())
				}
				b.StopTimer()
				if _, err := d.Recovery.CleanupTest(ctx, &ferryv1.VMRequest{Vm: "big-1"}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
