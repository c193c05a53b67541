package sim_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/pkg/ferrytest"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/journal/journaltest"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim"
)

// faults returns reduced in a normal test run and full when FERRY_FAULTS
// is "full" (make faults).
func faults(reduced, full int) int {
	if os.Getenv("FERRY_FAULTS") == "full" {
		return full
	}
	return reduced
}

// tryExport reads one disk of a point; it returns the error instead of
// failing the test.
func tryExport(d *sim.Drill, vm string, id uint64, disk string) ([]byte, error) {
	stream, err := d.Recovery.ExportPoint(context.Background(), &ferryv1.ExportPointRequest{Vm: vm, Point: fmt.Sprint(id), Disk: disk})
	if err != nil {
		return nil, err
	}
	var img []byte
	for {
		c, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return img, nil
			}
			return nil, err
		}
		if c.GetDiskSize() > 0 && img == nil {
			img = make([]byte, c.GetDiskSize())
		}
		copy(img[c.GetOffset():], c.GetData())
	}
}

// TestBitFlipsAtRest flips bits in the stored records and points of a
// protected VM while the process server is down: a scrub finds every one
// with its location, every point that reads a flipped value fails with a
// checksum error or, if the read never needs the flipped value, serves
// exactly its ground truth (no point ever serves wrong data, and none the
// scrub found sound is refused), and the agent is asked to send the corrupt blocks
// again. FERRY_FAULTS=full flips 500 bits; a normal run 100.
func TestBitFlipsAtRest(t *testing.T) {
	ctx := context.Background()
	rounds, per := faults(5, 25), 20
	d, err := sim.New(ctx, sim.Config{Seed: 41, VMs: []sim.VMConfig{linux("rot-1", 64<<10, sim.Uniform)}, Networks: sim.DefaultNetworks(),
		Dir: t.TempDir(), Logger: ferrytest.Logger(t), CrashInterval: 15 * time.Second, ProcessInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Run(ctx, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := d.ProcessNow(ctx); err != nil {
		t.Fatal(err)
	}
	v := d.VMs[0]
	rng := rand.New(rand.NewPCG(41, 1))
	var flipped, detected, refused, served, resyncs int
	for round := 0; round < rounds; round++ {
		resp, err := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "rot-1"})
		if err != nil {
			t.Fatal(err)
		}
		points := resp.GetPoints()
		var flips []journaltest.Flip
		if err := d.RestartPS(ctx, func(dir string) error {
			flips, err = journaltest.FlipBits(filepath.Join(dir, "journal.db"), "rot-1", rng, per)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		flipped += len(flips)
		ferrytest.WaitFor(t, 30*time.Second, "the agent to reconnect", func() bool {
			return slices.Contains(d.PS.Receiver().Sessions(), journal.VMID("rot-1"))
		})
		res, err := d.PS.Scrub(ctx, "rot-1")
		if err != nil {
			t.Fatal(err)
		}
		// bad[point][disk]: the point reads a corrupt value for that disk
		// (disk -1: for every disk) and must not serve it.
		bad := map[uint64]map[int]bool{}
		mark := func(p uint64, disk int) {
			if bad[p] == nil {
				bad[p] = map[int]bool{}
			}
			bad[p][disk] = true
		}
		for _, f := range flips {
			found := false
			if f.Bucket == "points" {
				found = slices.Contains(res.BadPoints, f.Seq)
				mark(uint64(f.Seq), -1)
			}
			for _, c := range res.Corrupt {
				if c.Seq == f.Seq {
					found = true
					for _, p := range c.Points {
						mark(uint64(p), c.Disk)
					}
				}
			}
			if !found {
				t.Fatalf("round %d: flip %v not found by the scrub", round, f)
			}
			detected++
		}
		if res.ResyncRequested {
			resyncs++
		}
		for _, p := range points {
			truth, err := d.TruthFor(v, p)
			if err != nil {
				continue
			}
			for i, disk := range []string{"disk0", "disk1"} {
				img, err := tryExport(d, "rot-1", p.GetId(), disk)
				isBad := bad[p.GetId()][-1] || bad[p.GetId()][i]
				switch {
				case err != nil && !strings.Contains(err.Error(), "checksum"):
					t.Fatalf("round %d: point %d %s refused without naming the checksum: %v", round, p.GetId(), disk, err)
				case err != nil && !isBad:
					t.Fatalf("round %d: point %d %s refused although the scrub found it sound: %v", round, p.GetId(), disk, err)
				case err != nil:
					refused++
				default:
					// Served, also when the scrub counted it affected (a
					// corrupt record the read never needed, e.g. metadata
					// of blocks newer writes cover): it must be right.
					if diff := ferrytest.Diff(img, ferrytest.Image(t, truth.Disks[i])); diff != "" {
						t.Fatalf("round %d: point %d (%s) %s served wrong data: %s\nflips %v\ncorrupt %+v bad points %v", round, p.GetId(), p.GetTag(), disk, diff, flips, res.Corrupt, res.BadPoints)
					}
					served++
				}
			}
		}
		// The store is mended for the next round; the agent's resend
		// arrived meanwhile.
		if err := v.Agent.WaitSynced(ctx); err != nil {
			t.Fatal(err)
		}
		if err := d.RestartPS(ctx, func(dir string) error { return journaltest.Unflip(filepath.Join(dir, "journal.db"), flips) }); err != nil {
			t.Fatal(err)
		}
		if res, err := d.PS.Scrub(ctx, "rot-1"); err != nil || res.Err() != nil {
			t.Fatalf("round %d: scrub after mending: %v %v", round, err, res.Err())
		}
	}
	journaltest.MustCheck(t, d.PS.Journal())
	t.Logf("%d bits flipped at rest, %d found by the scrub; %d point disks refused with a checksum error, %d served and equal to ground truth; %d resyncs asked of the agent",
		flipped, detected, refused, served, resyncs)
}
