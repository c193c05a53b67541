package sim_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/pkg/objstore"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim"
)

// TestRetentionInTheBucket runs 36 virtual hours with a 24 h retention
// window and an object store: retention's base images reach the bucket,
// which lets go of every segment before the newest base; a second process
// server rebuilt from the bucket alone holds every retained point, each
// equal to its ground truth.
func TestRetentionInTheBucket(t *testing.T) {
	if raceEnabled {
		t.Skip("36 virtual hours take minutes under the race detector; make test runs it")
	}
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	cfg := objstore.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: "retention",
		Key: bytes.Repeat([]byte{6}, 32)}
	if err := objstore.CreateBucket(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	st, err := objstore.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	vm := linux("ret-2", 1<<10, sim.Uniform)
	d, err := sim.New(ctx, sim.Config{Seed: 13, VMs: []sim.VMConfig{vm}, Networks: sim.DefaultNetworks(), Dir: t.TempDir(),
		Logger: ferrytest.Logger(t), Tick: time.Minute, CrashInterval: 10 * time.Minute, ProcessInterval: 30 * time.Minute,
		Retention: 24 * time.Hour, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	defer journaltest.MustCheck(t, d.PS.Journal())
	for range 6 {
		if err := d.Run(ctx, 6*time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := d.ProcessNow(ctx); err != nil {
			t.Fatal(err)
		}
	}
	local, err := d.PS.Journal().VM(ctx, "ret-2")
	if err != nil {
		t.Fatal(err)
	}
	if local.BaseSeq == 0 {
		t.Fatal("retention made no base in 36 h with a 24 h window")
	}
	objs, err := st.List(ctx, "vms/ret-2/")
	if err != nil {
		t.Fatal(err)
	}
	var base uint64
	for _, n := range objs {
		if rest, ok := strings.CutSuffix(strings.TrimPrefix(n, "vms/ret-2/base/"), "/manifest"); ok {
			fmt.Sscanf(rest, "%x", &base)
		}
	}
	if base == 0 || base > uint64(local.BaseSeq) {
		t.Fatalf("the bucket's base is at %d, the journal's at %d: want one, not ahead", base, local.BaseSeq)
	}
	segs := 0
	for _, n := range objs {
		var first, last, term uint64
		if _, err := fmt.Sscanf(strings.TrimPrefix(n, "vms/ret-2/seg/"), "%x-%x-%x", &first, &last, &term); err == nil {
			segs++
			if last <= base {
				t.Fatalf("segment %s ends before the base at %d", n, base)
			}
		}
	}
	t.Logf("36 h: journal base at %d, bucket base at %d, %d segments after it, %d objects", local.BaseSeq, base, segs, len(objs))

	// Rebuilt from the bucket alone.
	other := ferrytest.StartPS(t, func(c *processserver.Config) { c.Store = st })
	cc := ferrytest.Dial(t, other.Addr)
	want, err := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "ret-2"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := ferryv1.NewRecoveryClient(cc).ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "ret-2"})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[uint64]bool{}
	for _, p := range got.GetPoints() {
		ids[p.GetId()] = true
	}
	for _, p := range want.GetPoints() {
		if !ids[p.GetId()] {
			t.Fatalf("point %d of the process server is not in the rebuilt one", p.GetId())
		}
	}
	all := want.GetPoints()
	v := d.VMs[0]
	for _, p := range []*ferryv1.RecoveryPoint{all[0], all[len(all)/2], all[len(all)-1]} {
		truth, err := d.TruthFor(v, p)
		if err != nil {
			t.Fatal(err)
		}
		for i, disk := range truth.Disks {
			_, img := ferrytest.Export(t, cc, "ret-2", fmt.Sprint(p.GetId()), fmt.Sprintf("disk%d", i))
			if diff := ferrytest.Diff(img, ferrytest.Image(t, disk)); diff != "" {
				t.Fatalf("rebuilt point %d disk%d differs from ground truth: %s", p.GetId(), i, diff)
			}
		}
	}
}
