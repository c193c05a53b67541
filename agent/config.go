package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/clock"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// Mode says how the agent learns of changes.
type Mode int

const (
	// ModeSplitter captures every write made through the agent's devices
	// (Agent.Disk), in order. Recovery points are crash-consistent.
	ModeSplitter Mode = iota
	// ModeScan finds changes by hashing the disks every ScanInterval and
	// comparing with the hashes it sent last; for disks that other
	// processes write. A point holds the disks as one scan pass read them.
	ModeScan
)

// Disk is one disk of the protected VM.
type Disk struct {
	Name   string
	Device blockdev.Device
}

// Config configures an Agent.
type Config struct {
	// VM is the protected VM's name.
	VM    string
	Disks []Disk
	// StateDir keeps the agent's state across restarts.
	StateDir string
	// Target is the receiver's gRPC address.
	Target string
	// Targets are more process servers of the recovery site's cluster:
	// when the one the agent talks to does not answer, it tries the next
	// (and a process server that does not serve the VM names the one that
	// does, which the agent follows).
	Targets     []string
	DialOptions []grpc.DialOption
	Mode        Mode
	// Epoch of the replication direction (default 1).
	Epoch uint64
	// CrashInterval cuts a crash-consistent point this often (splitter
	// mode); 0 leaves it to Mark. The receiver's replication policy
	// replaces it when the agent connects, unless IgnorePolicy is set.
	CrashInterval time.Duration
	// AppInterval cuts an application-consistent point this often through
	// the freeze and thaw hooks; 0 leaves it to MarkApp. The policy
	// replaces it too.
	AppInterval time.Duration
	// IgnorePolicy keeps CrashInterval and AppInterval whatever policy the
	// receiver sends (the simulator cuts its points itself, to keep their
	// ground truth).
	IgnorePolicy bool
	// GroupHoldTimeout is the longest a replication group's barrier may
	// hold the machine's writes (default 2s; the process server may ask
	// for less).
	GroupHoldTimeout time.Duration
	// OnGroupHold, when set, is called while the machine's writes are held
	// for a group marker, with the marker's tag.
	OnGroupHold func(tag string)
	// Freeze quiesces the application (it flushes and holds its writes);
	// Thaw lets it go on. Thaw runs whenever Freeze was called.
	Freeze, Thaw func(ctx context.Context) error
	// QuiesceTimeout bounds a freeze (default 10s): past it, no
	// app-consistent point is cut.
	QuiesceTimeout time.Duration
	// ScanInterval is the time between scan passes (scan mode).
	ScanInterval time.Duration
	// ScanRate bounds, in bytes per second, how fast hashing reads the
	// disks (scan passes and resyncs), so that a scan leaves the machine's
	// storage to its workload (0: as fast as the disks give).
	ScanRate int64
	// Heartbeat is how often the agent says it is alive when it has
	// nothing to send (default 5s); the receiver marks the VM critical
	// after 3 missed.
	Heartbeat time.Duration
	// MaxBandwidth bounds the bytes the agent sends per second (0: no
	// limit).
	MaxBandwidth int64
	// QueueBytes bounds the change queue; beyond it the agent falls back to
	// the dirty bitmap (default 64 MiB).
	QueueBytes int64
	// WindowBytes bounds the data sent and not yet acknowledged (default
	// 32 MiB).
	WindowBytes int64
	// BatchBytes is the target data size of one message (default 1 MiB).
	BatchBytes int
	// AnswerTimeout is how long the agent waits to hear from the receiver
	// while it waits for an answer: to its hello, or to records it sent
	// and that are not acknowledged yet (default 1m). Past it the stream
	// is taken for stalled (a message lost on a damaged link, a receiver
	// that hangs): the agent drops the connection and connects again.
	AnswerTimeout time.Duration
	// ShutdownTimeout bounds how long Close waits for acknowledgements
	// before saving what is unsent as a dirty bitmap (default 10s).
	ShutdownTimeout time.Duration
	// Machine describes the protected machine to the receiver.
	Machine *ferryv1.MachineInfo
	// ShutdownMachine shuts the protected machine down when a planned
	// failover asks for it; nil means the agent cannot and says so.
	ShutdownMachine func(ctx context.Context) error
	// Clock stamps recovery points (default: the real clock).
	Clock      clock.Clock
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// DefaultConfig returns the defaults ferry-agent starts from.
func DefaultConfig() Config {
	return Config{
		Epoch:           1,
		CrashInterval:   5 * time.Minute,
		ScanInterval:    time.Minute,
		Heartbeat:       5 * time.Second,
		QueueBytes:      64 << 20,
		WindowBytes:     32 << 20,
		BatchBytes:      1 << 20,
		ShutdownTimeout: 10 * time.Second,
		AnswerTimeout:   time.Minute,
	}
}

func (c *Config) setDefaults() {
	d := DefaultConfig()
	if c.Epoch == 0 {
		c.Epoch = d.Epoch
	}
	if c.ScanInterval == 0 {
		c.ScanInterval = d.ScanInterval
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = d.Heartbeat
	}
	if c.QueueBytes == 0 {
		c.QueueBytes = d.QueueBytes
	}
	if c.WindowBytes == 0 {
		c.WindowBytes = d.WindowBytes
	}
	if c.BatchBytes == 0 {
		c.BatchBytes = d.BatchBytes
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = d.ShutdownTimeout
	}
	if c.AnswerTimeout == 0 {
		c.AnswerTimeout = d.AnswerTimeout
	}
	if c.GroupHoldTimeout == 0 {
		c.GroupHoldTimeout = 2 * time.Second
	}
	if c.QuiesceTimeout == 0 {
		c.QuiesceTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Clock = clock.Or(c.Clock)
}

// Validate reports the first field that is wrong.
func (c *Config) Validate() error {
	if c.VM == "" {
		return errors.New("vm: a VM name is required")
	}
	if len(c.Disks) == 0 {
		return errors.New("disk: at least one disk is required")
	}
	seen := map[string]bool{}
	for _, d := range c.Disks {
		if d.Name == "" || seen[d.Name] {
			return fmt.Errorf("disk: names must be unique and not empty (%q)", d.Name)
		}
		seen[d.Name] = true
		if d.Device == nil {
			return fmt.Errorf("disk %s: no device", d.Name)
		}
		if d.Device.Size() == 0 || d.Device.Size()%blockdev.BlockSize != 0 {
			return fmt.Errorf("disk %s: size %d is not a positive multiple of %d bytes", d.Name, d.Device.Size(), blockdev.BlockSize)
		}
	}
	if c.StateDir == "" {
		return errors.New("state: a state directory is required")
	}
	if c.Target == "" {
		return errors.New("ps: a receiver address is required")
	}
	if c.AnswerTimeout < 0 || (c.AnswerTimeout > 0 && c.AnswerTimeout < time.Second) {
		return fmt.Errorf("answer-timeout: %v is below the 1s minimum", c.AnswerTimeout)
	}
	if c.CrashInterval < 0 || (c.CrashInterval > 0 && c.CrashInterval < time.Second) {
		return fmt.Errorf("crash-interval: %v is below the 1s minimum", c.CrashInterval)
	}
	if c.AppInterval > 0 && (c.Freeze == nil || c.Mode != ModeSplitter) {
		return errors.New("app-interval: app-consistent points need a freeze hook and the write splitter (--nbd-listen)")
	}
	if c.Mode == ModeScan && c.ScanInterval < 100*time.Millisecond {
		return fmt.Errorf("scan-interval: %v is below the 100ms minimum", c.ScanInterval)
	}
	if c.MaxBandwidth < 0 || (c.MaxBandwidth > 0 && c.MaxBandwidth < 64<<10) {
		return fmt.Errorf("max-bandwidth: %d bytes/s is below the 64 KiB/s minimum (0: no limit)", c.MaxBandwidth)
	}
	if c.Heartbeat < 0 || (c.Heartbeat > 0 && c.Heartbeat < 10*time.Millisecond) || c.Heartbeat > time.Hour {
		return fmt.Errorf("heartbeat: %v is outside 10ms to 1h", c.Heartbeat)
	}
	if c.ScanRate < 0 || (c.ScanRate > 0 && c.ScanRate < 1<<20) {
		return fmt.Errorf("scan-rate: %d bytes/s is below the 1 MiB/s minimum (0: unbounded)", c.ScanRate)
	}
	if c.BatchBytes < blockdev.BlockSize || c.BatchBytes > 4<<20 {
		return fmt.Errorf("batch bytes: %d is outside 4 KiB to 4 MiB", c.BatchBytes)
	}
	if c.WindowBytes < int64(c.BatchBytes) {
		return fmt.Errorf("window bytes: %d is below one batch (%d)", c.WindowBytes, c.BatchBytes)
	}
	return nil
}
