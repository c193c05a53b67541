package processserver_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestHostileSecondAgent: a VM replicates from the first agent instance
// that connects. A second instance with the same VM identity is refused
// (the first keeps streaming, the replica stays the first machine's), an
// event is raised once and status shows it; an agent that does not name
// its instance is refused too. After an operator releases the VM the other
// instance takes it, and the first is refused in turn.
func TestHostileSecondAgent(t *testing.T) {
	ctx := context.Background()
	ps := ferrytest.StartPS(t)
	cc := ferrytest.Dial(t, ps.Addr)
	rc := ferryv1.NewRecoveryClient(cc)
	dir := t.TempDir()
	start := func(state string, fill byte) (*agent.Agent, *blockdev.Memory) {
		disk := blockdev.NewMemory(1 << 20)
		disk.WriteAt(ctx, bytes.Repeat([]byte{fill}, 64<<10), 0)
		a, err := agent.New(agent.Config{VM: "vm1", StateDir: filepath.Join(dir, state), Target: ps.Addr,
			Disks: []agent.Disk{{Name: "os", Device: disk}}, IgnorePolicy: true, ScanInterval: 50 * time.Millisecond,
			DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
			Logger:      ferrytest.Logger(t), Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Open(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close(ctx) })
		return a, disk
	}
	refused := func(a *agent.Agent) {
		t.Helper()
		select {
		case <-a.Done():
			if err := a.Err(); status.Code(err) != codes.PermissionDenied && !strings.Contains(err.Error(), "was refused") {
				t.Fatalf("second agent ended with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the second agent was not refused")
		}
	}
	marks := 0
	replicaIs := func(a *agent.Agent, fill byte) {
		t.Helper()
		marks++
		tag := "check-" + strings.Repeat("x", marks)
		a.Mark(false, tag)
		ferrytest.WaitFor(t, 30*time.Second, "point "+tag, func() bool {
			ps.ProcessAll(ctx)
			resp, err := rc.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "vm1"})
			if err != nil {
				return false
			}
			for _, p := range resp.GetPoints() {
				if p.GetTag() == tag {
					return true
				}
			}
			return false
		})
		_, img := ferrytest.Export(t, cc, "vm1", "latest", "os")
		if img[0] != fill || img[64<<10-1] != fill {
			t.Fatalf("replica holds %#x, want the machine that holds %#x", img[0], fill)
		}
	}
	first, _ := start("first", 0x11)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := first.WaitSynced(wctx); err != nil {
		t.Fatal(err)
	}
	second, _ := start("second", 0x22)
	refused(second)
	if err := first.WaitSynced(wctx); err != nil {
		t.Fatalf("the first agent after the second was refused: %v", err)
	}
	replicaIs(first, 0x11)
	// A raw client that names no instance.
	if err := exchange(t, ferryv1.NewReplicationClient(cc), hello("vm1", 1, 1<<20)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an agent without an instance: %v", err)
	}
	st, err := rc.Status(ctx, &ferryv1.StatusRequest{Vm: "vm1"})
	if err != nil {
		t.Fatal(err)
	}
	if v := st.GetVms()[0]; !strings.Contains(v.GetAgentConflict(), "was refused") || v.GetAgent() == "" {
		t.Fatalf("status: agent %q, conflict %q", v.GetAgent(), v.GetAgentConflict())
	}
	evs, err := rc.ListEvents(ctx, &ferryv1.ListEventsRequest{Vm: "vm1"})
	if err != nil {
		t.Fatal(err)
	}
	conflicts := 0
	for _, e := range evs.GetEvents() {
		if e.GetKind() == "agent-conflict" {
			conflicts++
		}
	}
	if conflicts != 2 { // the second agent, and the client without an instance
		t.Fatalf("%d agent-conflict events, want 2: %v", conflicts, evs.GetEvents())
	}

	// The operator moves the VM to the second machine.
	if _, err := rc.ReleaseAgent(ctx, &ferryv1.VMRequest{Vm: "nosuch"}); status.Code(err) != codes.NotFound {
		t.Fatalf("release of an unknown VM: %v", err)
	}
	first.Close(ctx)
	if _, err := rc.ReleaseAgent(ctx, &ferryv1.VMRequest{Vm: "vm1"}); err != nil {
		t.Fatal(err)
	}
	second.Close(ctx)
	moved, _ := start("second", 0x22)
	if err := moved.WaitSynced(wctx); err != nil {
		t.Fatalf("the released VM's new agent: %v", err)
	}
	replicaIs(moved, 0x22)
	again, _ := start("first", 0x11)
	refused(again)
	replicaIs(moved, 0x22)
}

// TestHostileSilentStreams: streams that never send their hello (a peer
// holding streams open, or a hello lost on the way) are ended by the
// process server after its HelloTimeout with DeadlineExceeded naming
// what was missing, instead of holding its resources; a stream whose
// hello comes in time is answered.
func TestHostileSilentStreams(t *testing.T) {
	ps := ferrytest.StartPS(t, func(c *processserver.Config) { c.HelloTimeout = 300 * time.Millisecond })
	rc := ferryv1.NewReplicationClient(ferrytest.Dial(t, ps.Addr))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 3 {
		stream, err := rc.Replicate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = stream.Recv()
		if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "no hello") {
			t.Fatalf("silent stream %d ended with %v", i, err)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Fatalf("silent stream %d ended after %v, before the hello timeout", i, d)
		}
	}
	stream, err := rc.Replicate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	h := hello("vm1", 1, 1<<20)
	h.GetHello().AgentInstance = "in-time"
	if err := stream.Send(h); err != nil {
		t.Fatal(err)
	}
	msg, err := stream.Recv()
	if err != nil || msg.GetHelloAck() == nil {
		t.Fatalf("a hello in time: %v %v", msg, err)
	}
}
