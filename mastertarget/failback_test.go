package mastertarget_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/mastertarget"
	"github.com/ferrydr/ferry/pkg/retention"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestFailbackRefusals: failbacks the master target cannot carry out are
// refused before any recovered VM is asked to shut down, each with what is
// wrong: bad sync or point, a VM not replicating here, one without a point,
// a VM reprotected to synchronize during failover only asked to sync
// before, and bad group requests.
func TestFailbackRefusals(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	mt, err := mastertarget.New(mastertarget.Config{DataDir: filepath.Join(dir, "mt"), Listen: "127.0.0.1:0",
		Primary: &mastertarget.FilePrimary{AlternateDir: filepath.Join(dir, "alt")}, ProcessInterval: -1, Logger: ferrytest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := mt.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer mt.Close(ctx)
	cc, err := grpc.NewClient(mt.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := ferryv1.NewMasterTargetClient(cc)
	disks := []*ferryv1.DiskInfo{{Name: "os", SizeBytes: 1 << 20}}
	for _, vm := range []struct {
		name   string
		during bool
	}{{"web", false}, {"db", true}} {
		if _, err := c.PrepareReprotect(ctx, &ferryv1.PrepareReprotectRequest{Vm: vm.name, Disks: disks, Epoch: 2,
			Location: string(ferry.LocationAlternate), SyncDuring: vm.during}); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := c.ReprotectStatus(ctx, &ferryv1.VMRequest{Vm: "db"})
	if err != nil || !rs.GetSyncDuring() {
		t.Fatalf("db's reverse replication: %v %v", rs, err)
	}
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"sync sometimes", func() error {
			_, err := c.Failback(ctx, &ferryv1.MTFailbackRequest{Vm: "web", Sync: "sometimes", Point: "latest"})
			return err
		}, codes.InvalidArgument, `sync "sometimes"`},
		{"custom point", func() error {
			_, err := c.Failback(ctx, &ferryv1.MTFailbackRequest{Vm: "web", Sync: "before", Point: "42"})
			return err
		}, codes.InvalidArgument, "latest or latest-app"},
		{"unknown VM", func() error {
			_, err := c.Failback(ctx, &ferryv1.MTFailbackRequest{Vm: "mail", Sync: "before", Point: "latest"})
			return err
		}, codes.FailedPrecondition, "not replicating to this master target"},
		{"no point yet", func() error {
			_, err := c.Failback(ctx, &ferryv1.MTFailbackRequest{Vm: "web", Sync: "before", Point: "latest"})
			return err
		}, codes.FailedPrecondition, "no recovery point at the master target yet"},
		{"sync before after a sync-during reprotect", func() error {
			_, err := c.Failback(ctx, &ferryv1.MTFailbackRequest{Vm: "db", Sync: "before", Point: "latest"})
			return err
		}, codes.FailedPrecondition, "synchronize during failover only"},
		{"no app point", func() error {
			_, err := c.Failback(ctx, &ferryv1.MTFailbackRequest{Vm: "db", Sync: "during", Point: "latest-app"})
			return err
		}, codes.FailedPrecondition, "no app-consistent point"},
		{"group name that is a path", func() error {
			_, err := c.FailbackGroup(ctx, &ferryv1.MTFailbackGroupRequest{Group: "../x", Vms: []string{"web"}, Sync: "during"})
			return err
		}, codes.InvalidArgument, "group name"},
		{"group of one VM", func() error {
			_, err := c.FailbackGroup(ctx, &ferryv1.MTFailbackGroupRequest{Group: "shop", Vms: []string{"db"}, Sync: "during"})
			return err
		}, codes.InvalidArgument, "2 to 16 VMs"},
		{"group of 17 VMs", func() error {
			vms := make([]string, 17)
			for i := range vms {
				vms[i] = fmt.Sprintf("vm%d", i)
			}
			_, err := c.FailbackGroup(ctx, &ferryv1.MTFailbackGroupRequest{Group: "shop", Vms: vms, Sync: "during"})
			return err
		}, codes.InvalidArgument, "2 to 16 VMs"},
		{"group of 16 VMs passes the count (and stops at the first unknown VM)", func() error {
			vms := make([]string, 16)
			for i := range vms {
				vms[i] = fmt.Sprintf("vm%d", i)
			}
			_, err := c.FailbackGroup(ctx, &ferryv1.MTFailbackGroupRequest{Group: "shop", Vms: vms, Sync: "during"})
			return err
		}, codes.FailedPrecondition, "vm vm0 is not replicating"},
		{"reprotect to somewhere else", func() error {
			_, err := c.PrepareReprotect(ctx, &ferryv1.PrepareReprotectRequest{Vm: "mail", Disks: disks, Epoch: 2, Location: "elsewhere"})
			return err
		}, codes.InvalidArgument, `location "elsewhere"`},
		{"reprotect without an epoch", func() error {
			_, err := c.PrepareReprotect(ctx, &ferryv1.PrepareReprotectRequest{Vm: "mail", Disks: disks, Location: "alternate"})
			return err
		}, codes.InvalidArgument, "an epoch are required"},
		{"reprotect of 64 disks is taken", func() error {
			var many []*ferryv1.DiskInfo
			for i := range 64 {
				many = append(many, &ferryv1.DiskInfo{Name: fmt.Sprintf("d%d", i), SizeBytes: 1 << 20})
			}
			_, err := c.PrepareReprotect(ctx, &ferryv1.PrepareReprotectRequest{Vm: "big", Disks: many, Epoch: 2, Location: "alternate"})
			if err != nil {
				return err
			}
			return status.Error(codes.AlreadyExists, "taken")
		}, codes.AlreadyExists, "taken"},
		{"reprotect of 65 disks", func() error {
			var many []*ferryv1.DiskInfo
			for i := range 65 {
				many = append(many, &ferryv1.DiskInfo{Name: fmt.Sprintf("d%d", i), SizeBytes: 1 << 20})
			}
			_, err := c.PrepareReprotect(ctx, &ferryv1.PrepareReprotectRequest{Vm: "mail", Disks: many, Epoch: 2, Location: "alternate"})
			return err
		}, codes.InvalidArgument, "1 to 64 disks"},
		{"VM twice in a group", func() error {
			_, err := c.FailbackGroup(ctx, &ferryv1.MTFailbackGroupRequest{Group: "shop", Vms: []string{"db", "db"}, Sync: "during"})
			return err
		}, codes.InvalidArgument, "listed twice"},
		{"group with a VM not here", func() error {
			_, err := c.FailbackGroup(ctx, &ferryv1.MTFailbackGroupRequest{Group: "shop", Vms: []string{"db", "mail"}, Sync: "during"})
			return err
		}, codes.FailedPrecondition, "vm mail is not replicating"},
	} {
		err := tc.call()
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want %v saying %q", tc.name, err, tc.code, tc.msg)
		}
	}
	// Reverse agents are told the failback policy in their hello, and
	// db's agent to send nothing until the failback.
	for _, vm := range []string{"web", "db"} {
		st, err := ferryv1.NewReplicationClient(cc).Replicate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Hello{Hello: &ferryv1.Hello{Vm: vm, Epoch: 2, BlockSize: 4096,
			Disks: disks, AgentInstance: "a-" + vm}}}); err != nil {
			t.Fatal(err)
		}
		m, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		ack := m.GetHelloAck()
		if ack.GetPolicy().GetName() != retention.FailbackName || ack.GetDeferSync() != (vm == "db") {
			t.Fatalf("%s's hello answered with policy %q, defer_sync %v", vm, ack.GetPolicy().GetName(), ack.GetDeferSync())
		}
		st.CloseSend()
	}
}
