// Package processserver is Ferry's recovery-site server. It receives the
// replication streams of protected VMs into a journal (pkg/ingest), turns
// their markers into recovery points and serves the recovery API that
// operators use to list, verify and export those points.
package processserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/nbd"
	"github.com/ferrydr/ferry/pkg/objstore"
	"github.com/ferrydr/ferry/pkg/rpo"
	"github.com/ferrydr/ferry/pkg/tier"
	"github.com/ferrydr/ferry/pkg/tlsca"
)

// Config configures a Server.
type Config struct {
	// DataDir holds the journal file.
	DataDir string
	// Listen is the gRPC address (host:port); ":0" picks a free port.
	Listen string
	// MetricsListen is the admin address serving /metrics; empty turns it
	// off.
	MetricsListen string
	// Pprof also serves Go's profiler under /debug/pprof/ there.
	Pprof bool
	// Heartbeat is how often an idle agent that names no interval in its
	// hello is taken to say it is alive (default DefaultHeartbeat): a VM
	// whose agent has been silent for HeartbeatsMissed of them is critical.
	Heartbeat time.Duration
	// Webhooks are URLs each event is POSTed to as JSON.
	Webhooks []string
	// Codec compresses journaled data: "zstd" (default), "s2" or "none".
	Codec string
	// MaxMessageBytes bounds one gRPC message (default 8 MiB).
	MaxMessageBytes int
	// MaxStreams bounds the concurrent streams of one connection (default
	// 64).
	MaxStreams uint32
	Logger     *slog.Logger
	// Registerer receives the metrics; a fresh registry when nil.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics; it must match Registerer when both are set.
	Gatherer prometheus.Gatherer
	// NoSync skips fsync: tests of logic only.
	NoSync bool
	// Clock is the server's time (default real; the simulator's virtual).
	Clock clock.Clock
	// Compute creates VMs at failover (default: HookCompute with
	// ComputeHook).
	Compute     Compute
	ComputeHook string
	// ComputeHookTimeout bounds each call of the compute hook (default
	// 10 min); then it is killed with its process group.
	ComputeHookTimeout time.Duration
	// ProcessInterval is how often received markers are processed into
	// recovery points (default 5s; negative: only on demand).
	ProcessInterval time.Duration
	// NBDListen serves recovery points and test-failover disks over NBD
	// (host:port or unix:PATH); empty: off. A Unix socket is mode 0600 and
	// admits only the server's user and root (the kernel's peer
	// credentials); TCP needs TLS (clients present an operator or admin
	// certificate of the deployment's CA, after NBD STARTTLS) or
	// NBDInsecure.
	NBDListen string
	// NBDInsecure serves NBD over plain TCP without authentication.
	NBDInsecure bool
	// MaxDiskBytes bounds the size an agent may declare for a disk (default
	// ingest.DefaultMaxDiskBytes, 64 TiB).
	MaxDiskBytes int64
	// HelloTimeout is how long a new replication stream may take to send
	// its hello before it is ended (default 1 min).
	HelloTimeout time.Duration
	// ScratchQuota bounds the bytes all writable exports (NBD copy-on-write
	// exports and test-failover disks) may write into their scratch files
	// together (default 16 GiB), so that a client writing without end fills
	// its export, not the journal's file system; a write beyond it fails
	// with ENOSPC.
	ScratchQuota int64
	// Retention is the default policy's recovery point retention when the
	// server creates it (default 24 h, as for Hyper-V-style protection;
	// VMware-style VMs get the 72 h policy; negative: the longest, 35
	// days). Operators change it with PutPolicy afterwards.
	Retention time.Duration
	// RPOThreshold is the default policies' RPO alert threshold when the
	// server creates them (default 15 min): a VM whose newest point is
	// older raises an alert (metric and event).
	RPOThreshold time.Duration
	// MasterTarget is the primary site's master target (host:port), for
	// reprotect and failback; empty: failback is not available.
	MasterTarget string
	// GroupSchedule is how often the server looks whether a replication
	// group's next multi-VM point is due (default 1s; negative: only when
	// asked, with GroupPoint).
	GroupSchedule time.Duration
	// PlanActionTimeout bounds a recovery plan's command actions (default
	// 10 min).
	PlanActionTimeout time.Duration
	// PlanActions runs recovery plan actions (default: ShellActions as
	// PlanActionUser; the simulator's are callbacks).
	PlanActions PlanActionRunner
	// PlanActionUser is the user command actions run as (default nobody):
	// never the server's, which can read the CA's key and every replica.
	PlanActionUser string
	// PlanActionEnv is added to the actions' clean environment (NAME=VALUE).
	PlanActionEnv []string
	// TLS serves every port with TLS 1.3 and mutual authentication: agents
	// need a certificate naming their VM, operators an operator
	// certificate (tlsca). Nil: plain text.
	TLS *tls.Config
	// IdentityDir holds the server's certificate, for its expiry metric.
	IdentityDir string
	// CA signs enrolling agents' certificates (the Enrollment API); nil:
	// enrollment is off.
	CA *tlsca.CA
	// MasterTargetTLS is the client side of the connection to the master
	// target (the process server's own certificate); nil: plain text.
	MasterTargetTLS *tls.Config
	// EncryptionKey (32 bytes) encrypts journal payloads at rest with
	// AES-256-GCM; nil: plain text.
	EncryptionKey []byte
	// ProbeTimeout bounds the readiness probe of a failed-over machine
	// (its boot, DHCP lease and SSH/RDP answer) when the compute layer can
	// probe (default 3 min).
	ProbeTimeout time.Duration
	// Cost, when set, charges modeled time for processing (the simulator
	// sets it with its virtual clock); nil: processing takes its time.
	Cost CostModel
	// Store, when set, is the bucket every VM's journal is shipped to
	// (pkg/tier): each group commit's records are put there before they
	// are acknowledged, so that another process server can rebuild the VM
	// from the bucket alone. Nil: the journal file alone.
	Store *objstore.Store
	// StoreTimeout bounds one put to the Store (default
	// tier.DefaultPutTimeout): a store that does not answer in time fails
	// the shipment (its records stay unacknowledged, an event says so).
	StoreTimeout time.Duration
	// HotWindow is how much of each VM's newest history keeps its
	// payloads in the journal file when there is a Store: older records
	// are sealed into large segments in the bucket and their payloads
	// dropped from the file, read back through a cache of CacheBytes
	// (defaults DefaultHotWindow and tier.DefaultCacheBytes).
	HotWindow  time.Duration
	CacheBytes int64
	// Cluster, when its Endpoints are set, shares the VMs with the other
	// process servers of the site through etcd (needs Store).
	Cluster ClusterConfig
}

// DefaultConfig returns the configuration ferry-ps starts from.
func DefaultConfig() Config {
	return Config{DataDir: "ferry-ps-data", Listen: "127.0.0.1:7400", MetricsListen: "127.0.0.1:7401", Codec: "zstd"}
}

// Validate reports the first field that is wrong.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("data: a data directory is required")
	}
	if c.Listen == "" {
		return errors.New("listen: an address is required")
	}
	for _, u := range c.Webhooks {
		if err := validWebhook(u); err != nil {
			return err
		}
	}
	if _, err := journal.ParseCodec(c.Codec); err != nil {
		return fmt.Errorf("codec: %w", err)
	}
	if len(c.Cluster.Endpoints) > 0 && c.Store == nil {
		return errors.New("etcd: a cluster of process servers needs the object store (--store) that takeovers restore from")
	}
	return nil
}

// Server is a running process server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	clock   clock.Clock
	compute Compute
	ctl     *control
	j       *journal.Journal

	vmMu    sync.Mutex
	vmLocks map[string]chan struct{}
	filesMu sync.Mutex
	files   map[string][]*blockdev.File // open disk files per VM slot
	scratch *scratchQuota

	bindMu sync.Mutex // orders agent binding decisions

	exportsMu sync.Mutex
	exports   map[string]NBDExport

	stop         context.CancelFunc
	bg           context.Context // ends when the server closes
	nbd          *nbd.Server
	nbdURI       func(export string) string
	alerts       rpo.Alerts
	relayMetrics relayMetrics
	rpoAlert     *prometheus.GaugeVec

	groupMetrics
	groupMu    sync.Mutex
	groupLocks map[string]*sync.Mutex
	groupLast  map[string]time.Time
	groupBusy  map[string]bool
	planMu     sync.Mutex
	planResume map[string]chan string

	mtConn *grpc.ClientConn
	mt     *masterTarget
	recv   *ingest.Receiver
	tier   *tier.Tier    // nil: no object store
	clu    *clusterState // nil: one process server alone

	hooks *webhooks // nil: none configured

	signIn atomic.Value // a signInHolder; none: the console is off

	healthMu     sync.Mutex
	lastHealth   map[ferry.VMID]Health // what checkHealth last saw
	storeDown    bool                  // the object store refused the last segment
	shippedState map[ferry.VMID]string // what shipStates last shipped
	baseShipped  map[ferry.VMID]time.Time
	grpc         *grpc.Server
	lis          net.Listener
	adm          *http.Server
	admL         net.Listener
	wg           sync.WaitGroup
}

// New validates cfg and prepares a server; Open starts it.
func New(cfg Config) (*Server, error) {
	if cfg.Codec == "" {
		cfg.Codec = "zstd"
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 8 << 20
	}
	if cfg.MaxStreams == 0 {
		cfg.MaxStreams = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Clock = clock.Or(cfg.Clock)
	if cfg.Compute == nil {
		cfg.Compute = HookCompute{Command: cfg.ComputeHook, Timeout: cfg.ComputeHookTimeout}
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.ProcessInterval == 0 {
		cfg.ProcessInterval = 5 * time.Second
	}
	if cfg.GroupSchedule == 0 {
		cfg.GroupSchedule = time.Second
	}
	if cfg.PlanActionTimeout == 0 {
		cfg.PlanActionTimeout = 10 * time.Minute
	}
	if cfg.PlanActions == nil {
		if cfg.PlanActionUser == "" {
			cfg.PlanActionUser = "nobody"
		}
		cred, err := lookupCredential(cfg.PlanActionUser)
		if err != nil {
			return nil, fmt.Errorf("plan action user: %w", err)
		}
		cfg.PlanActions = ShellActions{Timeout: cfg.PlanActionTimeout, User: cred, UserName: cfg.PlanActionUser, Env: cfg.PlanActionEnv, Log: cfg.Logger.With("component", "plan-actions")}
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = 3 * time.Minute
	}
	if cfg.Retention == 0 {
		cfg.Retention = 24 * time.Hour
	}
	if cfg.RPOThreshold == 0 {
		cfg.RPOThreshold = 15 * time.Minute
	}
	if cfg.ScratchQuota == 0 {
		cfg.ScratchQuota = 16 << 30
	}
	if cfg.Registerer == nil {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		cfg.Registerer, cfg.Gatherer = reg, reg
	}
	var hooks *webhooks
	if len(cfg.Webhooks) > 0 {
		hooks = newWebhooks(cfg.Webhooks, cfg.Listen, cfg.Logger.With("component", "webhooks"), cfg.Registerer)
	}
	return &Server{cfg: cfg, log: cfg.Logger.With("component", "ps"), hooks: hooks, clock: cfg.Clock, compute: cfg.Compute,
		vmLocks: map[string]chan struct{}{}, files: map[string][]*blockdev.File{},
		scratch: newScratchQuota(cfg.ScratchQuota), exports: map[string]NBDExport{},
		rpoAlert: newRPOAlert(cfg.Registerer), groupMetrics: newGroupMetrics(cfg.Registerer), relayMetrics: newRelayMetrics(cfg.Registerer),
		groupLocks: map[string]*sync.Mutex{}, groupLast: map[string]time.Time{}, groupBusy: map[string]bool{},
		planResume: map[string]chan string{}, lastHealth: map[ferry.VMID]Health{}, shippedState: map[ferry.VMID]string{}, baseShipped: map[ferry.VMID]time.Time{}}, nil
}

// Open opens the journal and starts serving.
func (s *Server) Open(ctx context.Context) error {
	if err := s.open(ctx); err != nil {
		// Whatever was opened is closed again: the stores, the listeners,
		// the goroutines started.
		s.Close(ctx)
		return err
	}
	s.log.Info("process server started", "listen", s.Addr(), "metrics", s.MetricsAddr(), "data", s.cfg.DataDir, "codec", s.cfg.Codec)
	return nil
}

func (s *Server) open(ctx context.Context) error {
	s.bg, s.stop = context.WithCancel(context.Background())
	s.newTier()
	if err := s.openStores(ctx); err != nil {
		return err
	}
	if err := s.openTier(ctx); err != nil {
		return err
	}
	if err := s.openReceiver(ctx); err != nil {
		return err
	}
	s.registerMetrics()
	if err := s.serveGRPC(); err != nil {
		return err
	}
	s.joinCluster()
	if err := s.dialMasterTarget(); err != nil {
		return err
	}
	if err := s.serveNBD(); err != nil {
		return err
	}
	s.startLoops()
	if s.cfg.MetricsListen != "" {
		return s.serveAdmin()
	}
	return nil
}

// openStores opens the journal and the control store and brings them to
// where the last run left them (bases attached, interrupted operations
// resolved).
func (s *Server) openStores(ctx context.Context) error {
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("open process server: %w", err)
	}
	j, err := journal.Open(filepath.Join(s.cfg.DataDir, "journal.db"), journal.Options{NoSync: s.cfg.NoSync, Key: s.cfg.EncryptionKey})
	if err != nil {
		return err
	}
	s.j = j
	if s.tier != nil {
		// Payloads sealed away are read from the bucket from the start:
		// resolving an interrupted operation may need them.
		j.SetCold(s.tier)
	}
	if s.ctl, err = openControl(filepath.Join(s.cfg.DataDir, "control.db")); err != nil {
		return err
	}
	if err := s.ensurePolicies(); err != nil {
		return err
	}
	if err := s.attachBases(ctx); err != nil {
		return err
	}
	if err := s.recoverInterrupted(ctx); err != nil {
		return fmt.Errorf("open process server: interrupted operations: %w", err)
	}
	return nil
}

// openReceiver starts the ingest of agents' streams into the journal.
func (s *Server) openReceiver(ctx context.Context) error {
	codec, _ := journal.ParseCodec(s.cfg.Codec)
	var err error
	s.recv, err = ingest.New(ingest.Config{MaxDiskBytes: s.cfg.MaxDiskBytes, HelloTimeout: s.cfg.HelloTimeout, Clock: s.clock,
		Journal: s.j, Codec: codec, Logger: s.log, Registerer: s.cfg.Registerer, Namespace: "ps",
		MaxBatchBytes: s.cfg.MaxMessageBytes / 2,
		OnHello:       s.onHello,
		Ship:          s.shipHook(),
		Admit:         s.admitAgentRPC,
		Authorize: func(ctx context.Context, vm ferry.VMID) error {
			return tlsca.AgentAuthorizer(s.cfg.TLS)(ctx, string(vm))
		},
	})
	if err != nil {
		return err
	}
	s.recv.Open(ctx)
	return nil
}

// registerMetrics registers the server's own gauges.
func (s *Server) registerMetrics() {
	if s.cfg.Registerer == nil {
		return
	}
	s.cfg.Registerer.Register(newHealthCollector(s))
	if dir := s.cfg.IdentityDir; dir != "" {
		s.cfg.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_ps_certificate_expiry_seconds",
			Help: "Seconds until the process server's certificate expires (issue a new one with ferry-ps ca issue --role ps before)."},
			func() float64 {
				_, na, err := tlsca.Expiry(dir)
				if err != nil {
					return 0
				}
				return time.Until(na).Seconds()
			}))
	}
	j := s.j
	if s.tier != nil {
		payload := func(cold bool) func() float64 {
			return func() float64 {
				vms, err := j.VMs(context.Background())
				if err != nil {
					return 0
				}
				var n uint64
				for _, vm := range vms {
					if cold {
						n += vm.ColdBytes
					} else {
						n += vm.StoredBytes - min(vm.ColdBytes, vm.StoredBytes)
					}
				}
				return float64(n)
			}
		}
		help := "Payload bytes of the journal: local, in the journal file (the hot window and what is not yet sealed); cold, sealed away to the object store."
		s.cfg.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_ps_journal_payload_bytes", Help: help,
			ConstLabels: prometheus.Labels{"where": "local"}}, payload(false)))
		s.cfg.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_ps_journal_payload_bytes", Help: help,
			ConstLabels: prometheus.Labels{"where": "cold"}}, payload(true)))
		t := s.tier
		s.cfg.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_ps_tier_cache_bytes",
			Help: "Bytes of segments the cache holds for reads of payloads sealed away (bounded by --cache-size)."},
			func() float64 { return float64(t.CacheStats().Bytes) }))
		s.cfg.Registerer.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_ps_tier_cache_misses_total",
			Help: "Reads of payloads sealed away that fetched their segment from the bucket."},
			func() float64 { return float64(t.CacheStats().Misses) }))
	}
	s.cfg.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_ps_journal_failed",
		Help: "1 once a journal commit failed (e.g. a failed fsync or a full disk): nothing more is accepted until ferry-ps restarts."},
		func() float64 {
			if j.Err() != nil {
				return 1
			}
			return 0
		}))
}

// serveNBD listens for NBD clients of exports, when asked to.
func (s *Server) serveNBD() error {
	if s.cfg.NBDListen == "" {
		return nil
	}
	if !strings.HasPrefix(s.cfg.NBDListen, "unix:") && s.cfg.TLS == nil && !s.cfg.NBDInsecure {
		return fmt.Errorf("nbd listen %s: %w (serve the gRPC API with TLS, listen on unix:PATH, or pass --nbd-insecure)", s.cfg.NBDListen, nbd.ErrPlainTCP)
	}
	l, err := nbd.Listen(s.cfg.NBDListen)
	if err != nil {
		return fmt.Errorf("nbd listen %s: %w", s.cfg.NBDListen, err)
	}
	s.nbd = nbd.NewServer(s.log, s.nbdAccess())
	if path, ok := strings.CutPrefix(s.cfg.NBDListen, "unix:"); ok {
		s.nbdURI = func(e string) string { return "nbd+unix:///" + e + "?socket=" + path }
	} else {
		addr, scheme := l.Addr().String(), "nbd"
		if s.cfg.TLS != nil {
			scheme = "nbds" // STARTTLS, as libnbd names it
		}
		s.nbdURI = func(e string) string { return scheme + "://" + addr + "/" + e }
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.nbd.Serve(l)
	}()
	return nil
}

// startLoops starts the periodic processing and the replication groups'
// point schedule; Close stops them.
func (s *Server) startLoops() {
	bg := s.bg
	if s.hooks != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.hooks.start(bg)
			s.hooks.wait()
		}()
	}
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
	if s.tier != nil {
		s.wg.Add(2)
		go func() {
			defer s.wg.Done()
			clock.Every(bg, time.Second, func() { s.shipStates(bg) })
		}()
		go func() {
			defer s.wg.Done()
			clock.Every(bg, s.sealEvery(), func() { s.sealAll(bg) })
		}()
	}
	if s.cfg.GroupSchedule > 0 {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			clock.Every(bg, s.cfg.GroupSchedule, func() { s.scheduleGroups(bg) })
		}()
	}
}

func (s *Server) serveAdmin() error {
	mux := http.NewServeMux()
	g := s.cfg.Gatherer
	if g == nil {
		g = prometheus.DefaultGatherer
	}
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	if s.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	l, err := net.Listen("tcp", s.cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.MetricsListen, err)
	}
	s.admL = l
	s.adm = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.adm.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin serve", "err", err)
		}
	}()
	return nil
}

// Addr is the gRPC listener's address.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// MetricsAddr is the admin listener's address, or "".
func (s *Server) MetricsAddr() string {
	if s.admL == nil {
		return ""
	}
	return s.admL.Addr().String()
}

// Journal is the server's journal.
func (s *Server) Journal() *journal.Journal { return s.j }

// Close stops accepting streams, lets open streams commit what they had
// verified, and closes the journal.
func (s *Server) Close(ctx context.Context) error {
	if s.stop != nil {
		s.stop()
	}
	if s.nbd != nil {
		s.nbd.Close()
	}
	if s.recv != nil {
		s.recv.Close(ctx)
	}
	if s.grpc == nil && s.lis != nil {
		s.lis.Close() // listening, not serving yet
	}
	if s.grpc != nil {
		stopped := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-ctx.Done():
			s.grpc.Stop()
		case <-time.After(10 * time.Second):
			s.grpc.Stop()
		}
	}
	if s.adm != nil {
		s.adm.Close()
	}
	if s.mtConn != nil {
		s.mtConn.Close()
	}
	s.wg.Wait()
	s.filesMu.Lock()
	for slot, files := range s.files {
		for _, f := range files {
			f.Close()
		}
		delete(s.files, slot)
	}
	s.filesMu.Unlock()
	if s.ctl != nil {
		s.ctl.close()
	}
	if s.j != nil {
		return s.j.Close()
	}
	return nil
}

// Receiver is the server's replication receiver.
func (s *Server) Receiver() *ingest.Receiver { return s.recv }
