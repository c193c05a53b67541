// Package mastertarget is Ferry's primary-site receiver for failback.
// After a failover is committed and the VM reprotected, the agent on the
// recovered VM replicates to it: at the original location onto the primary
// machine's own disks (the journal's base, so that only what differs is
// sent), at an alternate location onto new disks. It keeps failback
// recovery points and, at failback, applies the chosen one to the primary
// disks and starts the primary VM. It uses the same journal and receiver as
// the process server.
package mastertarget

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/rpo"
	"github.com/ferrydr/ferry/pkg/tlsca"
)

// CostModel charges modeled time for work a drill does not really wait
// for. The simulator injects it with its virtual clock; a real master
// target has none, and measures.
type CostModel interface {
	// Link is how long n bytes take over the link from the recovery site,
	// and how the report names that time.
	Link(n int64) (time.Duration, string)
	// Disk is how long writing n bytes to the primary's disks takes.
	Disk(n int64) (time.Duration, string)
}

// Primary is the primary site as the master target reaches it.
// Implementations are safe for concurrent use.
type Primary interface {
	// OriginalDisks returns the primary machine's own disks of vm.
	OriginalDisks(ctx context.Context, vm string, disks []ferry.Disk) ([]blockdev.Device, error)
	// CreateDisks makes new, zeroed disks for vm at an alternate location;
	// it returns where they are, for the report.
	CreateDisks(ctx context.Context, vm string, disks []ferry.Disk) ([]blockdev.Device, []string, error)
	// Start starts the primary VM on its disks after failback.
	Start(ctx context.Context, vm string, location ferry.Location) error
}

// PrimaryStopper is a Primary that can shut a primary machine down: the
// master target keeps it shut down while its VM is reprotected.
type PrimaryStopper interface {
	Stop(ctx context.Context, vm string) error
}

// Config configures a Server.
type Config struct {
	DataDir       string
	Listen        string
	MetricsListen string
	Primary       Primary
	Clock         clock.Clock
	// Cost, when set, charges modeled time for what a failback moves over
	// the link and writes to the primary's disks during downtime (the
	// simulator sets it with its virtual clock); nil: both are measured.
	Cost CostModel
	// ProcessInterval is how often received markers become failback points
	// (default 5s; negative: only on demand).
	ProcessInterval time.Duration
	Logger          *slog.Logger
	Registerer      prometheus.Registerer
	Gatherer        prometheus.Gatherer
	// TLS serves with TLS 1.3 and mutual authentication: agents need a
	// certificate naming their VM, the process server its own. Nil: plain
	// text.
	TLS *tls.Config
	// MaxDiskBytes bounds the size of a disk reverse replication may
	// declare (default ingest.DefaultMaxDiskBytes).
	MaxDiskBytes int64
}

// Server is a running master target.
type Server struct {
	cfg   Config
	log   *slog.Logger
	clock clock.Clock
	j     *journal.Journal
	store *store
	recv  *ingest.Receiver
	grpc  *grpc.Server
	lis   net.Listener
	adm   *http.Server
	admL  net.Listener
	bg    context.Context // ends at Close: the background loops' context
	stop  context.CancelFunc
	wg    sync.WaitGroup

	mu        sync.Mutex
	targets   map[string][]blockdev.Device // where each VM's data lands
	failbacks map[string]bool              // VMs failing back now

	alerts   rpo.Alerts
	rpoAlert *prometheus.GaugeVec
}

// target is what the master target keeps of a reprotected VM.
type target struct {
	VM       string         `json:"vm"`
	Location ferry.Location `json:"location"`
	Disks    []ferry.Disk   `json:"disks"`
	Paths    []string       `json:"paths,omitempty"`
	Retired  bool           `json:"retired"`
	// SyncDuring: the failback synchronizes during failover only; the
	// agent sends nothing before it.
	SyncDuring bool `json:"sync_during,omitempty"`
}

// New prepares a master target; Open starts it.
func New(cfg Config) (*Server, error) {
	if cfg.DataDir == "" || cfg.Listen == "" {
		return nil, errors.New("master target: data and listen are required")
	}
	if cfg.Primary == nil {
		return nil, errors.New("master target: no primary site configured")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ProcessInterval == 0 {
		cfg.ProcessInterval = 5 * time.Second
	}
	if cfg.Registerer == nil {
		reg := prometheus.NewRegistry()
		cfg.Registerer, cfg.Gatherer = reg, reg
	}
	return &Server{cfg: cfg, log: cfg.Logger.With("component", "mt"), clock: clock.Or(cfg.Clock), targets: map[string][]blockdev.Device{},
		failbacks: map[string]bool{}, rpoAlert: newRPOAlert(cfg.Registerer)}, nil
}

// Open opens the journal and serves replication and the master target API.
func (s *Server) Open(ctx context.Context) error {
	if err := s.open(ctx); err != nil {
		// Whatever was opened is closed again.
		s.Close(ctx)
		return err
	}
	s.log.Info("master target started", "listen", s.Addr(), "data", s.cfg.DataDir)
	return nil
}

func (s *Server) open(ctx context.Context) error {
	s.bg, s.stop = context.WithCancel(context.Background())
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return err
	}
	j, err := journal.Open(filepath.Join(s.cfg.DataDir, "journal.db"), journal.Options{})
	if err != nil {
		return err
	}
	s.j = j
	if s.store, err = openStore(filepath.Join(s.cfg.DataDir, "targets.db")); err != nil {
		return err
	}
	if err := s.reattach(ctx); err != nil {
		return err
	}
	s.recv, err = ingest.New(ingest.Config{Journal: j, Logger: s.log, Registerer: s.cfg.Registerer, Namespace: "mt", MaxDiskBytes: s.cfg.MaxDiskBytes, Clock: s.clock,
		Authorize: s.authorize, OnHello: s.onHello})
	if err != nil {
		return err
	}
	s.recv.Open(ctx)
	if err := s.serveGRPC(); err != nil {
		return err
	}
	bg := s.bg
	if s.cfg.ProcessInterval > 0 {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			clock.Every(bg, s.cfg.ProcessInterval, func() {
				if err := s.ProcessAll(bg); err != nil && bg.Err() == nil {
					s.log.Error("processing received data", "err", err)
				}
			})
		}()
	}
	if s.cfg.MetricsListen != "" {
		if s.admL, err = net.Listen("tcp", s.cfg.MetricsListen); err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{}))
		s.adm = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.adm.Serve(s.admL) }()
	}
	return nil
}

// authorize lets agents write only their VM, and the process server
// relaying for them any VM, of those registered for reverse replication.
func (s *Server) authorize(ctx context.Context, vm ferry.VMID) error {
	if id, err := tlsca.PeerIdentity(ctx); s.cfg.TLS == nil || err != nil || id.Role != tlsca.RoleServer {
		if err := tlsca.AgentAuthorizer(s.cfg.TLS)(ctx, string(vm)); err != nil {
			return err
		}
	}
	t, err := s.store.target(string(vm))
	if err != nil {
		return err
	}
	if t == nil || t.Retired {
		return fmt.Errorf("vm %s is not registered for reverse replication here (reprotect it first)", vm)
	}
	return nil
}

// Addr is the gRPC address.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Journal is the master target's journal.
func (s *Server) Journal() *journal.Journal { return s.j }

// Close stops the server.
func (s *Server) Close(ctx context.Context) error {
	if s.stop != nil {
		s.stop()
	}
	if s.recv != nil {
		s.recv.Close(ctx)
	}
	if s.grpc != nil {
		s.grpc.Stop()
	} else if s.lis != nil {
		s.lis.Close() // listening, not serving yet
	}
	if s.adm != nil {
		s.adm.Close()
	} else if s.admL != nil {
		s.admL.Close()
	}
	s.wg.Wait()
	if s.store != nil {
		s.store.close()
	}
	if s.j != nil {
		return s.j.Close()
	}
	return nil
}

// ProcessAll turns received markers into failback points and applies the
// failback policy: retention and the RPO alert.
func (s *Server) ProcessAll(ctx context.Context) error {
	err := s.j.ProcessAll(ctx, nil)
	return errors.Join(err, s.applyPolicy(ctx))
}

// reattach opens the target disks of every active VM after a restart.
func (s *Server) reattach(ctx context.Context) error {
	ts, err := s.store.active()
	if err != nil {
		return fmt.Errorf("reattach: %w", err)
	}
	for _, t := range ts {
		var devs []blockdev.Device
		var err error
		if t.Location == ferry.LocationOriginal {
			devs, err = s.cfg.Primary.OriginalDisks(ctx, t.VM, t.Disks)
		} else {
			for _, p := range t.Paths {
				var f *blockdev.File
				if f, err = blockdev.OpenFile(p, false); err != nil {
					break
				}
				devs = append(devs, f)
			}
		}
		if err != nil {
			return fmt.Errorf("reattach vm %s: %w", t.VM, err)
		}
		if err := s.j.AttachBase(ctx, ferry.VMID(t.VM), devs); err != nil {
			return err
		}
		s.mu.Lock()
		s.targets[t.VM] = devs
		s.mu.Unlock()
	}
	return nil
}
