// Package lab runs Ferry's drill on real machines: a tiny Linux guest
// (sim/guest) boots under libvirt from the agent's NBD front end, so every
// write it makes passes the write splitter; the process server fails it
// over through the libvirt compute driver; the recovered guests boot, and
// the readiness probe reads their SSH banner. Every recovered file system
// is checked by e2fsck and its records against what the guest reported
// fsynced: crash consistency judged by a real kernel on a real file
// system, not only by byte equality.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/mastertarget"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/nbd"
	"github.com/ferrydr/ferry/pkg/virt"
	"github.com/ferrydr/ferry/pkg/wire"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim/guest"
)

// Config configures a real-machine drill.
type Config struct {
	// Dir holds the disks, journals and sockets; QEMU's user must be able
	// to reach it (the drill makes it 0711).
	Dir string
	// URI is libvirt's (default qemu:///system).
	URI string
	// Seed picks how long the guest writes before each failover and the
	// drill's subnets; a drill replays its choices from its seed.
	Seed uint64
	// DomainType is kvm or qemu; empty: what the host runs.
	DomainType string
	Logger     *slog.Logger
	// Out receives a line per step as the drill goes (nil: none).
	Out io.Writer
}

// Check is one thing the drill verified.
type Check struct {
	What   string
	OK     bool
	Detail string
}

// Stage is one action of the drill and what it measured.
type Stage struct {
	Name string
	Job  *processserver.Job
	// RTO is the wall time from the request until the readiness probe
	// answered; Boot is the share of starting the VM and probing it.
	RTO, Boot time.Duration
	// Modeled is the RTO the simulator charges for the same job: its
	// processing at the simulator's rate and failover processing; the
	// simulator boots machines instantly.
	Modeled time.Duration
	Banner  string
	Checks  []Check
}

// Report is a drill's outcome.
type Report struct {
	// ID is in the name of every domain and network of the drill.
	ID              string
	DomainType, Why string
	PrimaryBoot     time.Duration
	Stages          []*Stage
}

// Failed lists the checks that failed.
func (r *Report) Failed() []Check {
	var out []Check
	for _, s := range r.Stages {
		for _, c := range s.Checks {
			if !c.OK {
				out = append(out, c)
			}
		}
	}
	return out
}

// simProcessRate is the simulator's default processing rate (sim.Config).
const simProcessRate = 20 << 20

// protected is a guest running at the primary site on its agent's NBD
// front end.
type protected struct {
	name    string // the VM's name at the process server
	domain  string
	image   string
	console string
	agent   *agent.Agent
	nbd     *nbd.Server
}

func (p *protected) consoleText() string {
	b, _ := os.ReadFile(p.console)
	return string(b)
}

type lab struct {
	cfg                      Config
	rng                      *rand.Rand
	id                       string
	conn                     *virt.Conn
	lc                       *processserver.LibvirtCompute
	ps                       *processserver.Server
	mt                       *mastertarget.Server
	extra                    []*agent.Agent // reverse replication
	vms                      map[string]*protected
	kernel                   guest.Kernel
	bootStart                time.Time
	appID                    ferry.Seq // web's app-consistent point
	nets                     []string
	sitenet, testnet, recnet string
	report                   *Report
	out                      io.Writer
}

// Drill runs the real-machine drill. It returns the report so far with an
// error when it could not go on; failed checks do not stop it.
func Drill(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.URI == "" {
		cfg.URI = "qemu:///system"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	l := &lab{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 0x6c6162)), report: &Report{}, out: cfg.Out, vms: map[string]*protected{}}
	if l.out == nil {
		l.out = io.Discard
	}
	// Names unique to this run, so that drills on one host do not meet.
	l.id = fmt.Sprintf("%04x", uint16(os.Getpid())^uint16(time.Now().UnixNano()))
	l.report.ID = l.id
	defer l.teardown()
	if err := l.setup(ctx); err != nil {
		return l.report, err
	}
	for _, stage := range []func(context.Context) error{l.testFailover, l.badInput, l.appPoint, l.plannedFailover, l.unplannedFailover, l.failbackOriginal, l.failbackAlternate} {
		if err := stage(ctx); err != nil {
			return l.report, err
		}
	}
	return l.report, nil
}

func (l *lab) logf(format string, args ...any) { fmt.Fprintf(l.out, "== "+format+"\n", args...) }

func (l *lab) path(parts ...string) string {
	return filepath.Join(append([]string{l.cfg.Dir}, parts...)...)
}

func (l *lab) setup(ctx context.Context) error {
	for _, d := range []string{"", "site", "ps", "libvirt", "checks", "rec"} {
		if err := os.MkdirAll(l.path(d), 0o711); err != nil {
			return err
		}
		if err := os.Chmod(l.path(d), 0o711); err != nil {
			return err
		}
	}
	k, err := guest.FindKernel()
	if err != nil {
		return err
	}
	l.kernel = k
	l.logf("guest: kernel %s, busybox, ext4 root on a 64 MiB disk", k.Version)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	l.conn, err = virt.Dial(dctx, l.cfg.URI)
	cancel()
	if err != nil {
		return err
	}
	if err := l.networks(); err != nil {
		return err
	}
	l.lc, err = processserver.NewLibvirtCompute(ctx, processserver.LibvirtConfig{
		URI: l.cfg.URI, Dir: l.path("libvirt"), DomainType: l.cfg.DomainType, Network: l.recnet,
		Prefix: "ferry-" + l.id + "-rec-", ShutdownTimeout: 20 * time.Second, Logger: l.cfg.Logger})
	if err != nil {
		return err
	}
	l.report.DomainType, l.report.Why = l.lc.DomainType()
	l.logf("domain type %s: %s", l.report.DomainType, l.report.Why)
	if err := l.openMasterTarget(ctx); err != nil {
		return err
	}
	l.ps, err = processserver.New(processserver.Config{DataDir: l.path("ps"), Listen: "127.0.0.1:0", Compute: l.lc, MasterTarget: l.mt.Addr(),
		ProcessInterval: 2 * time.Second, GroupSchedule: -1, ProbeTimeout: 2 * time.Minute, Logger: l.cfg.Logger})
	if err != nil {
		return err
	}
	if err := l.ps.Open(ctx); err != nil {
		l.ps = nil
		return err
	}
	// web goes through the test, app-consistent and unplanned failovers,
	// db through a planned one; both boot at once.
	for _, name := range []string{"web", "db"} {
		if err := l.protect(ctx, name); err != nil {
			return err
		}
	}
	for _, name := range []string{"web", "db"} {
		p := l.vms[name]
		banner, err := l.waitSSH(ctx, p.domain, 3*time.Minute)
		if err != nil {
			return fmt.Errorf("primary guest %s: %w; console: %s", name, err, tail(p.consoleText(), 5))
		}
		l.logf("primary %s booted from the agent's NBD front end; port 22: %q", p.domain, banner)
	}
	l.report.PrimaryBoot = time.Since(l.bootStart)
	return nil
}

// networks makes three libvirt networks: the primary site's, an isolated
// one for test failovers and the recovery network (NAT).
func (l *lab) networks() error {
	l.sitenet, l.testnet, l.recnet = "ferry-"+l.id+"-site", "ferry-"+l.id+"-test", "ferry-"+l.id+"-rec"
	for i, name := range []string{l.sitenet, l.testnet, l.recnet} {
		var err error
		for try := 0; try < 8; try++ {
			subnet := fmt.Sprintf("10.%d.%d", 100+l.rng.IntN(150), l.rng.IntN(256))
			forward := ""
			if name == l.recnet {
				forward = "<forward mode='nat'/>"
			}
			x := fmt.Sprintf(`<network><name>%s</name>%s<bridge name='fr%s%d'/><ip address='%s.1' netmask='255.255.255.0'><dhcp><range start='%s.10' end='%s.200'/></dhcp></ip></network>`,
				name, forward, l.id, i, subnet, subnet, subnet)
			if err = l.conn.DefineNetwork(x); err == nil {
				l.nets = append(l.nets, name)
				break
			}
			l.conn.RemoveNetwork(name)
		}
		if err != nil {
			return fmt.Errorf("network %s: %w", name, err)
		}
	}
	return nil
}

// protect builds a guest, defines its domain on the agent's NBD front end,
// starts the agent and boots the domain.
func (l *lab) protect(ctx context.Context, name string) error {
	p := &protected{name: name, domain: "ferry-" + l.id + "-" + name, image: l.path("site", name+"-os.img"),
		console: l.path("site", name+"-console.log")}
	if _, err := guest.Build(p.image, 64); err != nil {
		return err
	}
	sock := l.path("site", name+".sock")
	spec := virt.DomainSpec{Name: p.domain, Type: l.report.DomainType, Network: l.sitenet, ConsoleLog: p.console,
		OSID: "http://debian.org/debian/12",
		Hardware: virt.Hardware{VCPUs: 1, MemoryMiB: 256, Arch: "x86_64", Firmware: virt.FirmwareKernel, Kernel: l.kernel.Path, Initrd: l.kernel.Initrd,
			Cmdline: guest.CmdLine, Disks: []virt.Disk{{Name: "os", Target: "vda", Bus: "virtio"}}, NICs: []virt.NIC{{Model: "virtio"}}, GuestAgent: true},
		Disks: []virt.DiskSource{{Name: "os", NBDSocket: sock, NBDExport: "os"}},
	}
	if err := l.conn.Define(spec); err != nil {
		return err
	}
	l.vms[name] = p
	if err := l.serve(ctx, p, 0, name+"-agent"); err != nil {
		return err
	}
	if l.bootStart.IsZero() {
		l.bootStart = time.Now()
	}
	return l.conn.Start(p.domain)
}

// waitSSH waits for a domain's DHCP lease and its SSH banner.
func (l *lab) waitSSH(ctx context.Context, dom string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		addr, err := l.conn.Address(dom)
		if err == nil && addr != "" {
			pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
			banner, err := processserver.ProbeSSH(pctx, net.JoinHostPort(addr, "22"))
			pcancel()
			if err == nil {
				return banner, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%s: no SSH banner within %v", dom, timeout)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// waitRecords waits until a primary guest reported n more records
// fsynced; it returns the highest number.
func (l *lab) waitRecords(ctx context.Context, p *protected, n int) (int, error) {
	from := guest.LastFsynced(p.consoleText())
	deadline := time.Now().Add(2 * time.Minute)
	for {
		last := guest.LastFsynced(p.consoleText())
		if last >= from+n {
			return last, nil
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("the primary guest %s reported records %d..%d fsynced in 2 minutes, want %d more: %s", p.name, from, last, n, tail(p.consoleText(), 3))
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (l *lab) stage(name string) *Stage {
	s := &Stage{Name: name}
	l.report.Stages = append(l.report.Stages, s)
	l.logf("%s", name)
	return s
}

func (s *Stage) check(what string, ok bool, format string, args ...any) {
	s.Checks = append(s.Checks, Check{What: what, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

// measure records a failover job's RTO, boot share, banner and findings.
func (s *Stage) measure(job *processserver.Job, err error, start time.Time, processed uint64) {
	s.RTO = time.Since(start)
	s.Job = job
	s.Modeled = time.Duration(float64(processed) / simProcessRate * float64(time.Second))
	if job == nil {
		s.check("job ran", false, "%v", err)
		return
	}
	s.check("job succeeded", err == nil, "job %d %s %s", job.ID, job.Outcome, job.Error)
	for _, st := range job.Steps {
		if st.Name == "start VM" || st.Name == "readiness checks" {
			s.Boot += st.Wall
		}
	}
	for _, f := range job.Findings {
		if strings.HasSuffix(f.Check, " answers") && f.OK {
			s.Banner = f.Detail
		}
		s.check("readiness: "+f.Check, f.OK && !f.Unknown, "%s", f.Detail)
	}
}

func (l *lab) processed(ctx context.Context, vm string) uint64 {
	v, err := l.ps.Journal().VM(ctx, ferry.VMID(vm))
	if err != nil {
		return 0
	}
	return v.ProcessedBytes
}

// failover runs a failover job and measures it.
func (l *lab) failover(ctx context.Context, s *Stage, req processserver.FailoverRequest) (*processserver.Job, error) {
	p0, start := l.processed(ctx, req.VM), time.Now()
	job, err := l.ps.Failover(ctx, req)
	s.measure(job, err, start, l.processed(ctx, req.VM)-p0)
	return job, err
}

// testFailover boots a second guest from copy-on-write overlays of the
// newest point on the isolated network while the primary keeps running
// and replicating, then cleans it up.
func (l *lab) testFailover(ctx context.Context) error {
	web := l.vms["web"]
	if _, err := l.waitRecords(ctx, web, 50+l.rng.IntN(100)); err != nil {
		return err
	}
	s := l.stage("test failover of web to latest on the isolated network " + l.testnet)
	before := guest.LastFsynced(web.consoleText())
	if _, err := l.failover(ctx, s, processserver.FailoverRequest{VM: "web", Type: processserver.FailoverTest, Point: ferry.PointLatest, Network: l.testnet}); err != nil {
		return nil
	}
	dom := "ferry-" + l.id + "-rec-web-test"
	x, xerr := l.conn.DomainXML(dom, false)
	s.check("disks are NBD overlays (nothing copied)", xerr == nil && strings.Contains(x, "protocol='nbd'") && !strings.Contains(x, ".img'"),
		"domain %s: %v", dom, xerr)
	after, werr := l.waitRecords(ctx, web, 20)
	s.check("primary keeps running and writing", werr == nil, "records %d -> %d during the test (%v)", before, after, werr)
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	serr := web.agent.WaitSynced(sctx)
	cancel()
	s.check("replication continues", serr == nil, "agent synced: %v", serr)

	c := l.stage("clean up the test failover")
	job, err := l.ps.CleanupTest(ctx, "web")
	c.check("job succeeded", err == nil, "%v", jobOutcome(job, err))
	l.checkNothingLeft(c, dom, "web/test")
	return nil
}

// checkNothingLeft checks that no domain, disk export, scratch file or
// driver directory of a (test) failover remains.
func (l *lab) checkNothingLeft(s *Stage, dom, slot string) {
	ok, err := l.conn.Exists(dom)
	s.check("no domain left", err == nil && !ok, "domain %s exists: %v (%v)", dom, ok, err)
	serving := l.lc.Serving()
	s.check("no export left", len(serving) == 0, "serving %v", serving)
	scratch := l.path("ps", "vms", filepath.FromSlash(slot))
	_, err = os.Stat(scratch)
	s.check("no scratch file left", errors.Is(err, os.ErrNotExist), "%s: %v", scratch, err)
	_, err = os.Stat(l.path("libvirt", dom))
	s.check("no socket or console log left", errors.Is(err, os.ErrNotExist), "%s: %v", l.path("libvirt", dom), err)
}

func jobOutcome(job *processserver.Job, err error) string {
	if job == nil {
		return fmt.Sprint(err)
	}
	return fmt.Sprintf("job %d %s %s", job.ID, job.Outcome, job.Error)
}

// badInput asks for failovers that cannot work: each must fail with a
// clear error on the job and leave nothing behind.
func (l *lab) badInput(ctx context.Context) error {
	s := l.stage("bad input: each refused with a clear error, nothing left behind")
	dom := "ferry-" + l.id + "-rec-web-test"
	cases := []struct {
		what, want string
		req        processserver.FailoverRequest
		before     func() error
		after      func()
	}{
		{what: "a network that does not exist", want: "no such network",
			req: processserver.FailoverRequest{VM: "web", Type: processserver.FailoverTest, Network: "ferry-" + l.id + "-nowhere"}},
		{what: "a test failover on a network that forwards", want: "isolated",
			req: processserver.FailoverRequest{VM: "web", Type: processserver.FailoverTest, Network: l.recnet}},
		{what: "a domain name already taken", want: "already taken",
			req: processserver.FailoverRequest{VM: "web", Type: processserver.FailoverTest, Network: l.testnet},
			before: func() error {
				return l.conn.Define(virt.DomainSpec{Name: dom, Type: l.report.DomainType,
					Disks: []virt.DiskSource{{Name: "os", File: l.path("site", "web-os.img")}}})
			},
			after: func() {
				ok, err := l.conn.Exists(dom)
				s.check("the domain that held the name is untouched", ok && err == nil, "exists %v (%v)", ok, err)
				l.conn.Undefine(dom)
			}},
	}
	for _, c := range cases {
		if c.before != nil {
			if err := c.before(); err != nil {
				return err
			}
		}
		job, err := l.ps.Failover(ctx, c.req)
		s.check(c.what+": refused", err != nil && job != nil && strings.Contains(job.Error, c.want), "%s", jobOutcome(job, err))
		if c.after != nil {
			c.after()
		} else {
			l.checkNothingLeft(s, dom, "web/test")
		}
	}
	_, err := virt.Dial(ctx, "qemu+unix:///system?socket="+l.path("no-libvirt.sock"))
	s.check("an unreachable libvirt: refused", errors.Is(err, virt.ErrUnreachable), "%v", err)
	// A machine whose kernel this host does not have: a VM protected with
	// a description that names one.
	if err := l.ghost(ctx); err != nil {
		return err
	}
	job, err := l.ps.Failover(ctx, processserver.FailoverRequest{VM: "ghost", Type: processserver.FailoverTest, Network: l.testnet})
	s.check("a missing kernel: refused", err != nil && job != nil && strings.Contains(job.Error, "vmlinuz-ferry-missing"), "%s", jobOutcome(job, err))
	l.checkNothingLeft(s, "ferry-"+l.id+"-rec-ghost-test", "ghost/test")
	return nil
}

// ghost protects a VM without a guest (an empty memory disk) whose
// recorded hardware boots a kernel this host does not have.
func (l *lab) ghost(ctx context.Context) error {
	hw := virt.Hardware{VCPUs: 1, MemoryMiB: 128, Firmware: virt.FirmwareKernel, Kernel: "/boot/vmlinuz-ferry-missing",
		Initrd: l.kernel.Initrd, Cmdline: guest.CmdLine}
	a, err := agent.New(agent.Config{VM: "ghost", Disks: []agent.Disk{{Name: "os", Device: blockdev.NewMemory(16 << 20)}},
		StateDir: l.path("site", "ghost-agent"), Target: l.ps.Addr(),
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Mode:        agent.ModeSplitter, CrashInterval: time.Second, IgnorePolicy: true,
		Machine: &ferryv1.MachineInfo{Os: "linux", Hardware: wire.HardwareProto(&hw)}, Logger: l.cfg.Logger.With("vm", "ghost")})
	if err != nil {
		return err
	}
	if err := a.Open(ctx); err != nil {
		return err
	}
	l.extra = append(l.extra, a)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if v, err := l.ps.Journal().VM(ctx, ferry.VMID("ghost")); err == nil && v.Points > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("vm ghost: no recovery point within a minute")
		}
	}
}

// appPoint cuts an app-consistent point through the guest agent's
// fsfreeze: its file system must be clean without journal replay.
func (l *lab) appPoint(ctx context.Context) error {
	s := l.stage("app-consistent point of web through fsfreeze in the guest")
	if err := l.vms["web"].agent.MarkApp(ctx, "lab-app"); err != nil {
		s.check("freeze and mark", false, "%v", err)
		return nil
	}
	var p ferry.Point
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) && p.ID == 0 {
		pts, _ := l.ps.Journal().Points(ctx, ferry.VMID("web"))
		for _, pt := range pts {
			if pt.Consistency == ferry.App {
				p = pt
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if p.ID == 0 {
		s.check("app-consistent point", false, "no app-consistent point processed within a minute")
		return nil
	}
	l.appID = p.ID
	s.check("app-consistent point", true, "point %d", p.ID)
	fr, rec, err := l.checkPoint(ctx, "web", "app", p.ID)
	if err != nil {
		s.check("file system", false, "%v", err)
		return nil
	}
	s.check("clean without journal replay", !fr.NeededRecovery && fr.Clean, "needs_recovery %v, e2fsck -fn clean %v", fr.NeededRecovery, fr.Clean)
	s.check("records whole", rec.Last > 0 && rec.Torn == 0, "records 1..%d, %d torn bytes", rec.Last, rec.Torn)
	return nil
}

// checkPoint materializes the point's disk and checks its file system and
// records.
func (l *lab) checkPoint(ctx context.Context, vm, name string, id ferry.Seq) (guest.FsckResult, guest.Records, error) {
	path := l.path("checks", vm+"-"+name+".img")
	v, err := l.ps.Journal().VM(ctx, ferry.VMID(vm))
	if err != nil {
		return guest.FsckResult{}, guest.Records{}, err
	}
	f, err := blockdev.CreateFile(path, v.Disks[0].Size)
	if err != nil {
		return guest.FsckResult{}, guest.Records{}, err
	}
	err = l.ps.Journal().Materialize(ctx, ferry.VMID(vm), id, 0, f, true)
	f.Close()
	if err != nil {
		return guest.FsckResult{}, guest.Records{}, err
	}
	fr, err := guest.Fsck(path)
	if err != nil {
		return fr, guest.Records{}, err
	}
	rec, err := guest.ReadRecords(path + ".fsck")
	return fr, rec, err
}

// plannedFailover fails db over after the agent shut its guest down
// (ACPI): nothing it fsynced may be lost, and its file system was
// unmounted cleanly.
func (l *lab) plannedFailover(ctx context.Context) error {
	db := l.vms["db"]
	if _, err := l.waitRecords(ctx, db, 20+l.rng.IntN(50)); err != nil {
		return err
	}
	s := l.stage("planned failover of db: the guest is shut down through libvirt, then fails over to the final point")
	job, err := l.failover(ctx, s, processserver.FailoverRequest{VM: "db", Type: processserver.FailoverPlanned, Network: l.recnet})
	st, serr := l.conn.State(db.domain)
	s.check("the primary guest was shut down", serr == nil && st == virt.ShutOff, "state %s %v", st, serr)
	reported := guest.LastFsynced(db.consoleText())
	s.check("the guest powered off through ACPI", strings.Contains(db.consoleText(), "power button: shutting down"), "console: %s", tail(db.consoleText(), 2))
	if err != nil || job.Point == nil {
		return nil
	}
	fr, rec, err := l.checkPoint(ctx, "db", "planned", job.Point.ID)
	if err != nil {
		s.check("file system", false, "%v", err)
		return nil
	}
	s.check("e2fsck: consistent", fr.Clean, "needed journal replay %v", fr.NeededRecovery)
	// A record can be fsynced in the instant before the guest printed it.
	s.check("no data lost", rec.Last >= reported && rec.Last <= reported+1 && rec.Torn == 0,
		"records 1..%d (+%d torn bytes); the guest reported %d fsynced before it powered off", rec.Last, rec.Torn, reported)
	db.agent.Abort()
	db.nbd.Close()
	return nil
}

// unplannedFailover loses the primary site while the guest writes, fails
// over to the latest point, changes to the app-consistent point (the
// domain is rebuilt on the same network) and commits.
func (l *lab) unplannedFailover(ctx context.Context) error {
	web := l.vms["web"]
	if _, err := l.waitRecords(ctx, web, 30+l.rng.IntN(100)); err != nil {
		return err
	}
	s := l.stage("unplanned failover of web to latest while the guest writes, to the recovery network " + l.recnet)
	reported := guest.LastFsynced(web.consoleText())
	// Everything the guest fsynced so far passed the splitter; wait until
	// the process server acknowledged it, then lose the site.
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	err := web.agent.WaitSynced(sctx)
	cancel()
	if err != nil {
		return err
	}
	if err := l.conn.Destroy(web.domain); err != nil {
		return err
	}
	web.agent.Abort()
	web.nbd.Close()
	l.logf("primary site lost: domain destroyed, agent gone; the guest had reported record %d fsynced", reported)
	job, err := l.failover(ctx, s, processserver.FailoverRequest{VM: "web", Type: processserver.FailoverUnplanned, Point: ferry.PointLatest})
	if err != nil || job.Point == nil {
		return nil
	}
	fr, rec, err := l.checkPoint(ctx, "web", "unplanned", job.Point.ID)
	if err != nil {
		s.check("file system", false, "%v", err)
		return nil
	}
	s.check("e2fsck: consistent (journal replay allowed)", fr.Clean, "needed journal replay %v; e2fsck -fn: %s", fr.NeededRecovery, tail(fr.Output, 2))
	s.check("every record reported fsynced is there", rec.Last >= reported, "records 1..%d unbroken (+%d torn bytes); the guest reported %d fsynced before the cut", rec.Last, rec.Torn, reported)
	dom := "ferry-" + l.id + "-rec-web"
	want := fmt.Sprintf("workload from record %d", rec.Last+1)
	var console string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if console, _ = l.lc.Console(ctx, dom); strings.Contains(console, want) {
			break
		}
	}
	s.check("the recovered guest goes on from the point", strings.Contains(console, want), "want %q; console: %s", want, tail(console, 3))

	if l.appID != 0 {
		c := l.stage("change point of web to the app-consistent point (before commit)")
		start := time.Now()
		job, err := l.ps.ChangePoint(ctx, "web", fmt.Sprint(l.appID))
		c.measure(job, err, start, 0)
		st, _ := l.ps.State(ctx, "web")
		c.check("rebuilt on the same network", st.Failover != nil && st.Failover.Network == l.recnet, "network %v", failoverNetwork(st))
	}

	c := l.stage("commit")
	job, err = l.ps.Commit(ctx, "web")
	c.check("job succeeded", err == nil, "%s", jobOutcome(job, err))
	pts, _ := l.ps.Journal().Points(ctx, ferry.VMID("web"))
	c.check("recovery points deleted", len(pts) == 0, "%d points left", len(pts))
	state, err := l.lc.State(ctx, dom)
	c.check("the recovered VM keeps running", state == "running", "%s %v", state, err)
	return nil
}

func failoverNetwork(st processserver.VMState) string {
	if st.Failover == nil {
		return "(no failover recorded)"
	}
	return st.Failover.Network
}

func (l *lab) teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if l.conn != nil {
		if doms, err := l.conn.Domains(); err == nil {
			for _, d := range doms {
				if strings.HasPrefix(d, "ferry-"+l.id+"-") {
					l.conn.Undefine(d)
				}
			}
		}
	}
	for _, p := range l.vms {
		if p.nbd != nil {
			p.nbd.Close()
		}
		if p.agent != nil {
			p.agent.Abort()
		}
	}
	for _, a := range l.extra {
		a.Abort()
	}
	if l.ps != nil {
		l.ps.Close(ctx)
	}
	if l.mt != nil {
		l.mt.Close(ctx)
	}
	if l.lc != nil {
		l.lc.Close()
	}
	if l.conn != nil {
		for _, n := range l.nets {
			l.conn.RemoveNetwork(n)
		}
		l.conn.Close()
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}
