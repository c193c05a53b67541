package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/internal/agenttest"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/nbd"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestNBDFrontEnd runs a protected VM on the agent's NBD exports with real
// clients: qemu-io makes overlapping, unaligned writes over TCP and a Unix
// socket with recovery points between them; every point, served by the
// process server over NBD and read back by nbdcopy, equals the disks at its
// marker; a copy-on-write export of a point takes writes without changing
// the point.
func TestNBDFrontEnd(t *testing.T) {
	ferrytest.NeedNBDClients(t)
	ctx := context.Background()
	psSock := filepath.Join(t.TempDir(), "ps.sock")
	ps := ferrytest.StartPS(t, func(c *processserver.Config) { c.NBDListen = "unix:" + psSock })
	cc := ferrytest.Dial(t, ps.Addr)
	rc := ferryv1.NewRecoveryClient(cc)
	v := agenttest.New(t, ps.Addr, 41, []int64{8 << 20, 4 << 20}, nil)
	v.Sync()

	srv := nbd.NewServer(ferrytest.Logger(t), nbd.Access{Insecure: true})
	defer srv.Close()
	for _, e := range v.A.NBDExports() {
		srv.Add(e)
	}
	tcp, err := nbd.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	unix, err := nbd.Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(tcp)
	go srv.Serve(unix)
	uri := func(i int, disk string) string {
		if i%2 == 0 {
			return fmt.Sprintf("nbd://%s/%s", tcp.Addr(), disk)
		}
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", disk, sock)
	}
	if list := ferrytest.Run(t, "nbdinfo", "--list", uri(1, "")); !strings.Contains(list, "disk0") || !strings.Contains(list, "disk1") {
		t.Fatalf("nbdinfo --list:\n%s", list)
	}

	// The model: what the disks must hold after each write.
	model := []*blockdev.Memory{blockdev.NewMemory(8 << 20), blockdev.NewMemory(4 << 20)}
	rng := rand.New(rand.NewPCG(41, 1))
	for i := 0; i < 40; i++ {
		d := rng.IntN(2)
		size := model[d].Size()
		n := int64(1 + rng.IntN(64<<10))
		off := rng.Int64N(min(size-n, 256<<10)) // a small region: writes overlap
		pat := byte(1 + rng.IntN(254))
		ferrytest.Run(t, "qemu-io", "-f", "raw", uri(i, fmt.Sprintf("disk%d", d)), "-c", fmt.Sprintf("write -P 0x%02x %d %d", pat, off, n))
		model[d].WriteAt(ctx, bytes.Repeat([]byte{pat}, int(n)), off)
		if i%5 == 4 {
			tag := fmt.Sprintf("nbd%d", i)
			if !v.A.Mark(false, tag) {
				t.Fatal("mark refused")
			}
			v.Truth[tag] = [][]byte{ferrytest.Image(t, model[0].Snapshot()), ferrytest.Image(t, model[1].Snapshot())}
		}
	}
	// The disks behind the splitter hold what the clients wrote.
	for d := range model {
		if diff := ferrytest.Diff(ferrytest.Image(t, v.Disks[d]), ferrytest.Image(t, model[d])); diff != "" {
			t.Fatalf("disk%d after the NBD writes: %s", d, diff)
		}
	}
	v.Sync()
	if err := ps.ProcessAll(ctx); err != nil {
		t.Fatal(err)
	}
	pts, _ := rc.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: v.Name})
	checked := 0
	out := filepath.Join(t.TempDir(), "point.img")
	var last *ferryv1.RecoveryPoint
	for _, p := range pts.GetPoints() {
		want, ok := v.Truth[p.GetTag()]
		if !ok {
			continue
		}
		last = p
		for d := range model {
			e, err := rc.ExportNBD(ctx, &ferryv1.ExportNBDRequest{Vm: v.Name, Point: fmt.Sprint(p.GetId()), Disk: fmt.Sprintf("disk%d", d)})
			if err != nil {
				t.Fatal(err)
			}
			os.Remove(out)
			ferrytest.Run(t, "nbdcopy", e.GetUri(), out)
			got, _ := os.ReadFile(out)
			if diff := ferrytest.Diff(got, want[d]); diff != "" {
				t.Fatalf("point %d (%s) disk%d over NBD: %s", p.GetId(), p.GetTag(), d, diff)
			}
			rc.UnexportNBD(ctx, &ferryv1.UnexportNBDRequest{Name: e.GetName()})
		}
		checked++
	}
	if checked != 8 {
		t.Fatalf("checked %d points, want 8", checked)
	}

	// A copy-on-write export takes writes; the point stays as it was.
	cow, err := rc.ExportNBD(ctx, &ferryv1.ExportNBDRequest{Vm: v.Name, Point: fmt.Sprint(last.GetId()), Disk: "disk0", Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	ferrytest.Run(t, "qemu-io", "-f", "raw", cow.GetUri(), "-c", "write -P 0x5a 4096 1000000")
	ferrytest.Run(t, "qemu-io", "-f", "raw", cow.GetUri(), "-c", "read -P 0x5a 4096 1000000")
	ro, err := rc.ExportNBD(ctx, &ferryv1.ExportNBDRequest{Vm: v.Name, Point: fmt.Sprint(last.GetId()), Disk: "disk0"})
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(out)
	ferrytest.Run(t, "nbdcopy", ro.GetUri(), out)
	got, _ := os.ReadFile(out)
	if diff := ferrytest.Diff(got, v.Truth[last.GetTag()][0]); diff != "" {
		t.Fatalf("the point changed after writes to its copy-on-write export: %s", diff)
	}
	ferrytest.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", out, ro.GetUri())
	if _, err := rc.UnexportNBD(ctx, &ferryv1.UnexportNBDRequest{Name: cow.GetName()}); err != nil {
		t.Fatal(err)
	}
}
