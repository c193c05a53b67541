// Package agenttest runs a protected VM in a test: memory disks, a real
// ferry-agent in the test's process writing through its splitter, and the
// ground truth of every point the test asked for, checked against what a
// process server exports.
package agenttest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

const bs = blockdev.BlockSize

// VM is a protected VM with memory disks, its agent and the
// ground truth of every point it asked for.
type VM struct {
	T     testing.TB
	Name  string
	RNG   *rand.Rand
	Disks []*blockdev.Memory
	A     *agent.Agent
	Cfg   agent.Config
	// Truth maps a marker's tag to every disk's image when it was cut.
	Truth map[string][][]byte
	Marks int
	// Touched holds every block written through the splitter ({disk, block}).
	Touched map[[2]int64]bool
}

// New starts protecting a VM named vm-SEED with memory disks of the given
// sizes, replicating to the process server at target; tune, when set,
// adjusts the agent's configuration first.
func New(t testing.TB, target string, seed uint64, sizes []int64, tune func(*agent.Config)) *VM {
	return NewWith(t, target, seed, sizes, tune, nil)
}

// NewWith is New with data written to the disks before protection
// starts (after it, every write must go through the splitter).
func NewWith(t testing.TB, target string, seed uint64, sizes []int64, tune func(*agent.Config), prefill func([]*blockdev.Memory)) *VM {
	v := &VM{T: t, Name: fmt.Sprintf("vm-%d", seed), RNG: rand.New(rand.NewPCG(seed, 99)), Truth: map[string][][]byte{}, Touched: map[[2]int64]bool{}}
	cfg := agent.Config{
		VM:          v.Name,
		StateDir:    t.TempDir(),
		Target:      target,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Logger:      ferrytest.Logger(t),
		Registerer:  prometheus.NewRegistry(),
	}
	for i, s := range sizes {
		m := blockdev.NewMemory(s)
		v.Disks = append(v.Disks, m)
		cfg.Disks = append(cfg.Disks, agent.Disk{Name: fmt.Sprintf("disk%d", i), Device: m})
	}
	if tune != nil {
		tune(&cfg)
	}
	if prefill != nil {
		prefill(v.Disks)
	}
	v.Cfg = cfg
	v.Start()
	return v
}

// Start (again) runs an agent with v.Cfg; it is closed at cleanup.
func (v *VM) Start() {
	v.T.Helper()
	v.Cfg.Registerer = prometheus.NewRegistry()
	a, err := agent.New(v.Cfg)
	if err != nil {
		v.T.Fatal(err)
	}
	if err := a.Open(context.Background()); err != nil {
		v.T.Fatal(err)
	}
	v.A = a
	v.T.Cleanup(func() { a.Close(context.Background()) })
}

// Write makes one random write through the splitter: mostly small, some
// large, some all zeros, some repeating text (compressible).
func (v *VM) Write() {
	v.T.Helper()
	d := v.RNG.IntN(len(v.Disks))
	size := v.Disks[d].Size()
	nb := int64(1 + v.RNG.IntN(4))
	if v.RNG.IntN(10) == 0 {
		nb = int64(16 + v.RNG.IntN(300)) // up to 1.2 MiB: split into several records
	}
	nb = min(nb, size/bs)
	off := v.RNG.Int64N(size/bs-nb+1) * bs
	data := make([]byte, nb*bs)
	switch v.RNG.IntN(4) {
	case 0:
	case 1:
		for i := range data {
			data[i] = byte(v.RNG.Uint32())
		}
	default:
		for i := range data {
			data[i] = "the quick brown fox jumps over the lazy dog "[i%44] + byte(v.RNG.IntN(2))
		}
	}
	if _, err := v.A.Disk(d).WriteAt(context.Background(), data, off); err != nil {
		v.T.Fatal(err)
	}
	for b := off / bs; b < (off+int64(len(data)))/bs; b++ {
		v.Touched[[2]int64{int64(d), b}] = true
	}
}

// Mark asks for a point and, if the agent queued it, records the truth.
func (v *VM) Mark() bool {
	v.Marks++
	tag := fmt.Sprintf("m%d", v.Marks)
	if !v.A.Mark(false, tag) {
		return false
	}
	var imgs [][]byte
	for _, d := range v.Disks {
		imgs = append(imgs, ferrytest.Image(v.T, d))
	}
	v.Truth[tag] = imgs
	return true
}

// Sync waits (up to a minute) until everything written is acknowledged.
func (v *VM) Sync() {
	v.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := v.A.WaitSynced(ctx); err != nil {
		v.T.Fatal(err)
	}
}

// VerifyPoints exports every point of the VM through the recovery API and
// compares each disk with the ground truth of its marker. It returns how
// many points it checked. process (when set) is the server's ProcessAll:
// points exist once the server has processed what it received.
func (v *VM) VerifyPoints(process func(context.Context) error, cc grpc.ClientConnInterface) int {
	v.T.Helper()
	if process != nil {
		if err := process(context.Background()); err != nil {
			v.T.Fatal(err)
		}
	}
	resp, err := ferryv1.NewRecoveryClient(cc).ListPoints(context.Background(), &ferryv1.ListPointsRequest{Vm: v.Name})
	if err != nil {
		v.T.Fatal(err)
	}
	checked := 0
	for _, p := range resp.GetPoints() {
		want, ok := v.Truth[p.GetTag()]
		if !ok {
			continue // a point the agent cut itself (end of a drain)
		}
		for i := range v.Disks {
			_, got := ferrytest.Export(v.T, cc, v.Name, fmt.Sprint(p.GetId()), fmt.Sprintf("disk%d", i))
			if d := ferrytest.Diff(got, want[i]); d != "" {
				v.T.Fatalf("point %d (%s) disk%d differs from ground truth: %s", p.GetId(), p.GetTag(), i, d)
			}
		}
		checked++
	}
	return checked
}

// VerifyLatest cuts a point at the end of everything received and checks
// it equals the disks now.
func (v *VM) VerifyLatest(cc grpc.ClientConnInterface) {
	v.T.Helper()
	for i, d := range v.Disks {
		_, got := ferrytest.Export(v.T, cc, v.Name, "latest", fmt.Sprintf("disk%d", i))
		if diff := ferrytest.Diff(got, ferrytest.Image(v.T, d)); diff != "" {
			v.T.Fatalf("latest point, disk%d differs from the source: %s", i, diff)
		}
	}
}
