package sim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/clock"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

const bootMagic = "FERRYBOOT"

// bootArea holds the boot block at the start of the first disk.
const bootArea = 64 << 10

// Pattern is how a workload spreads its writes.
type Pattern string

const (
	// Uniform writes anywhere on every disk.
	Uniform Pattern = "uniform"
	// Hotspot sends 90% of writes to the first tenth of the first disk.
	Hotspot Pattern = "hotspot"
	// Log appends sequentially, wrapping, on the last disk (plus a few
	// random writes elsewhere).
	Log Pattern = "log"
)

// Workload is what a VM writes.
type Workload struct {
	Churn   int64 // bytes per second
	Pattern Pattern
}

// VMConfig describes a simulated protected VM.
type VMConfig struct {
	Name     string
	Disks    []int64 // sizes in bytes, multiples of 4 KiB
	Machine  *ferryv1.MachineInfo
	Workload Workload
	// ShutdownFails makes the machine refuse to shut down.
	ShutdownFails bool
	// App runs the simulated application (see App) on the first disk.
	App bool
	// FreezeFails makes the application refuse to quiesce.
	FreezeFails bool
}

// ErrShutdownRefused is what a VM that will not shut down says.
var ErrShutdownRefused = errors.New("the guest did not respond to the shutdown request")

// VM is a simulated protected VM: memory disks written through its agent's
// write splitter by a seeded workload, with the ground truth of every
// recovery point it asked for.
type VM struct {
	Config VMConfig
	// disks are the primary machine's own disks; alternate the disks made
	// for an alternate-location failback; active those the workload writes
	// now (the primary's, the recovered VM's at the recovery site, or the
	// alternate ones).
	disks     []*blockdev.Memory
	alternate []*blockdev.Memory
	active    []blockdev.Device
	rng       *rand.Rand
	app       *App
	// Agent protects the VM where it runs now; nil while unprotected.
	Agent *agent.Agent
	// recoveredAgent replicated the recovered VM back to the master target.
	recoveredAgent     *agent.Agent
	sentBeforeFailback int64
	Running            bool

	logPos  int64
	Written int64 // bytes written so far
	// notes say when the VM wrote what (each work call); acked is what
	// its agent had acknowledged (Written) when it was last in sync.
	clock clock.Clock
	notes []writeNote
	acked writeNote
	marks int
	// truth maps a marker's tag to the disks when it was cut; group
	// markers record theirs from the agent's goroutine.
	truthMu sync.Mutex
	truth   map[string]Mark
}

// Truth returns the ground truth of the marker with that tag.
func (v *VM) Truth(tag string) (Mark, bool) {
	v.truthMu.Lock()
	defer v.truthMu.Unlock()
	m, ok := v.truth[tag]
	return m, ok
}

func (v *VM) setTruth(m Mark) {
	v.truthMu.Lock()
	defer v.truthMu.Unlock()
	v.truth[m.Tag] = m
}

// Mark is the ground truth of one marker.
type Mark struct {
	Tag     string
	Time    time.Time
	Written int64 // the VM's bytes written up to the marker
	Disks   []*blockdev.Memory
}

func newVM(cfg VMConfig, seed uint64) *VM {
	v := &VM{Config: cfg, rng: rand.New(rand.NewPCG(seed, 0x5eed)), Running: true, truth: map[string]Mark{}}
	for _, s := range cfg.Disks {
		m := blockdev.NewMemory(s)
		v.disks = append(v.disks, m)
		v.active = append(v.active, m)
	}
	boot := make([]byte, blockdev.BlockSize)
	copy(boot, fmt.Sprintf("%s os=%s vm=%s", bootMagic, cfg.Machine.GetOs(), cfg.Name))
	v.disks[0].WriteAt(context.Background(), boot, 0)
	if cfg.App {
		v.app = newApp(seed)
		v.app.flush(context.Background(), v.disks[0])
	}
	return v
}

// Disk returns the VM's source disk i (not through the splitter).
func (v *VM) Disk(i int) *blockdev.Memory { return v.disks[i] }

// shutdown stops the workload, unless the VM is set to refuse. The disks
// as they are then are the truth of the final point.
func (v *VM) shutdown(ctx context.Context, now time.Time) error {
	if v.Config.ShutdownFails {
		return ErrShutdownRefused
	}
	v.Running = false
	v.setTruth(v.snapshot("shutdown", now))
	return nil
}

// Active returns the disks the VM runs on now.
func (v *VM) Active() []blockdev.Device { return v.active }

// work writes n bytes through the agent's splitter, and lets the
// application write some data blocks.
func (v *VM) work(ctx context.Context, n int64) error {
	if v.app != nil {
		if err := v.app.work(ctx, v.dev(0), 2); err != nil {
			return err
		}
	}
	for n > 0 {
		size := int64(4+v.rng.IntN(61)) * 1024 / blockdev.BlockSize * blockdev.BlockSize
		size = min(size, max(n, blockdev.BlockSize))
		disk, off := v.place(size)
		data := make([]byte, size)
		v.fill(data)
		if _, err := v.dev(disk).WriteAt(ctx, data, off); err != nil {
			return err
		}
		v.Written += size
		n -= size
	}
	if v.clock != nil {
		v.notes = append(v.notes, writeNote{At: v.clock.Now(), Written: v.Written})
	}
	return nil
}

// writeNote says how much the VM had written by a moment.
type writeNote struct {
	At      time.Time
	Written int64
}

// newestIn is when the VM made the newest write of its first written
// bytes (zero if none).
func (v *VM) newestIn(written int64) time.Time {
	var at time.Time
	for _, n := range v.notes {
		if n.Written > written {
			break
		}
		at = n.At
	}
	return at
}

// oldestAfter is when the VM made its first write beyond its first
// written bytes (zero if none).
func (v *VM) oldestAfter(written int64) time.Time {
	for _, n := range v.notes {
		if n.Written > written {
			return n.At
		}
	}
	return time.Time{}
}

// dev is where the VM writes disk i now: through its agent's splitter
// when protected.
func (v *VM) dev(i int) blockdev.Device {
	if v.Agent != nil {
		return v.Agent.Disk(i)
	}
	return v.active[i]
}

// freeze quiesces the application: it flushes and holds its writes (the
// drill does not write while an app marker is cut).
func (v *VM) freeze(ctx context.Context) error {
	if v.Config.FreezeFails {
		return fmt.Errorf("the application did not respond to the freeze request")
	}
	if v.app == nil {
		return nil
	}
	return v.app.flush(ctx, v.dev(0))
}

// place picks where a write of size bytes goes.
func (v *VM) place(size int64) (int, int64) {
	pick := func(disk int, lo, hi int64) (int, int64) {
		lo = max(lo, 0)
		if disk == 0 {
			lo = max(lo, reservedArea)
		}
		blocks := (hi - lo - size) / blockdev.BlockSize
		if blocks <= 0 {
			return disk, lo
		}
		return disk, lo + v.rng.Int64N(blocks+1)*blockdev.BlockSize
	}
	last := len(v.active) - 1
	switch v.Config.Workload.Pattern {
	case Hotspot:
		if v.rng.IntN(10) < 9 {
			return pick(0, 0, v.active[0].Size()/10)
		}
	case Log:
		if v.rng.IntN(10) < 8 {
			lo := int64(0)
			if last == 0 {
				lo = reservedArea
			}
			if v.logPos < lo || v.logPos+size > v.active[last].Size() {
				v.logPos = lo
			}
			off := v.logPos
			v.logPos += size
			return last, off
		}
	}
	d := v.rng.IntN(len(v.active))
	return pick(d, 0, v.active[d].Size())
}

// fill makes data that compresses about 2:1: some zeros, some random,
// mostly text.
func (v *VM) fill(b []byte) {
	switch r := v.rng.IntN(10); {
	case r < 1:
		clear(b)
	case r < 4:
		for i := range b {
			b[i] = byte(v.rng.Uint32())
		}
	default:
		const text = "INSERT INTO orders (id, customer, amount) VALUES "
		for i := range b {
			b[i] = text[i%len(text)]
		}
		for i := 0; i < len(b); i += 64 {
			b[i] = byte('0' + v.rng.IntN(10))
		}
	}
}

// markApp cuts an application-consistent point through the agent's
// freeze and thaw hooks and records its truth.
func (v *VM) markApp(ctx context.Context, now time.Time) (string, error) {
	v.marks++
	tag := fmt.Sprintf("%s-app%d", v.Config.Name, v.marks)
	if v.Agent == nil {
		return "", fmt.Errorf("vm %s is not protected", v.Config.Name)
	}
	if err := v.Agent.MarkApp(ctx, tag); err != nil {
		return "", err
	}
	v.setTruth(v.snapshot(tag, now))
	return tag, nil
}

// mark asks the agent for a crash-consistent point and records its truth.
func (v *VM) mark(now time.Time) (string, bool) {
	v.marks++
	tag := fmt.Sprintf("%s-m%d", v.Config.Name, v.marks)
	if v.Agent == nil || !v.Agent.Mark(false, tag) {
		return "", false
	}
	v.setTruth(v.snapshot(tag, now))
	return tag, true
}

func (v *VM) snapshot(tag string, now time.Time) Mark {
	m := Mark{Tag: tag, Time: now, Written: v.Written}
	for _, d := range v.active {
		if mem, ok := d.(*blockdev.Memory); ok {
			m.Disks = append(m.Disks, mem.Snapshot())
			continue
		}
		c := blockdev.NewMemory(d.Size())
		buf := make([]byte, 1<<20)
		for off := int64(0); off < d.Size(); off += int64(len(buf)) {
			n := min(int64(len(buf)), d.Size()-off)
			d.ReadAt(context.Background(), buf[:n], off)
			c.WriteAt(context.Background(), buf[:n], off)
		}
		m.Disks = append(m.Disks, c)
	}
	return m
}
