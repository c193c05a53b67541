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

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/nbd"
	"github.com/ferrydr/ferry/pkg/virt"
	"github.com/ferrydr/ferry/processserver"
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

type lab struct {
	cfg                      Config
	rng                      *rand.Rand
	id                       string
	conn                     *virt.Conn
	lc                       *processserver.LibvirtCompute
	ps                       *processserver.Server
	agent                    *agent.Agent
	nbd                      *nbd.Server
	nets                     []string
	primary                  string // the primary domain
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
	l := &lab{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 0x6c6162)), report: &Report{}, out: cfg.Out}
	if l.out == nil {
		l.out = io.Discard
	}
	// Names unique to this run, so that drills on one host do not meet.
	l.id = fmt.Sprintf("%04x", uint16(os.Getpid())^uint16(time.Now().UnixNano()))
	defer l.teardown()
	if err := l.setup(ctx); err != nil {
		return l.report, err
	}
	for _, stage := range []func(context.Context) error{l.testFailover, l.badInput, l.appPoint, l.unplannedFailover} {
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
	for _, d := range []string{"", "site", "ps", "libvirt", "checks"} {
		if err := os.MkdirAll(l.path(d), 0o711); err != nil {
			return err
		}
		if err := os.Chmod(l.path(d), 0o711); err != nil {
			return err
		}
	}
	image := l.path("site", "web-os.img")
	k, err := guest.Build(image, 64)
	if err != nil {
		return err
	}
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
	l.ps, err = processserver.New(processserver.Config{DataDir: l.path("ps"), Listen: "127.0.0.1:0", Compute: l.lc,
		ProcessInterval: 2 * time.Second, GroupSchedule: -1, ProbeTimeout: 2 * time.Minute, Logger: l.cfg.Logger})
	if err != nil {
		return err
	}
	if err := l.ps.Open(ctx); err != nil {
		l.ps = nil
		return err
	}
	return l.protect(ctx, image, k)
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

// protect runs the primary guest on the agent's NBD front end and waits
// until it boots, answers SSH and has a first recovery point.
func (l *lab) protect(ctx context.Context, image string, k guest.Kernel) error {
	l.primary = "ferry-" + l.id + "-web"
	sock := l.path("site", "web.sock")
	spec := virt.DomainSpec{Name: l.primary, Type: l.report.DomainType, Network: l.sitenet, ConsoleLog: l.path("site", "web-console.log"),
		OSID: "http://debian.org/debian/12",
		Hardware: virt.Hardware{VCPUs: 1, MemoryMiB: 256, Arch: "x86_64", Firmware: virt.FirmwareKernel, Kernel: k.Path, Initrd: k.Initrd,
			Cmdline: guest.CmdLine, Disks: []virt.Disk{{Name: "os", Target: "vda", Bus: "virtio"}}, NICs: []virt.NIC{{Model: "virtio"}}, GuestAgent: true},
		Disks: []virt.DiskSource{{Name: "os", NBDSocket: sock, NBDExport: "os"}},
	}
	if err := l.conn.Define(spec); err != nil {
		return err
	}
	dom := agent.LibvirtDomain{Conn: l.conn, Name: l.primary, ShutdownTimeout: 20 * time.Second}
	machine, err := dom.Describe(map[string]string{"os": image}, true)
	if err != nil {
		return err
	}
	dev, err := blockdev.OpenFile(image, false)
	if err != nil {
		return err
	}
	l.agent, err = agent.New(agent.Config{VM: "web", Disks: []agent.Disk{{Name: "os", Device: dev}}, StateDir: l.path("site", "agent"),
		Target: l.ps.Addr(), DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Mode: agent.ModeSplitter, CrashInterval: 2 * time.Second, IgnorePolicy: true, Machine: machine,
		Freeze: dom.Freeze, Thaw: dom.Thaw, ShutdownMachine: dom.Shutdown, Logger: l.cfg.Logger})
	if err != nil {
		return err
	}
	if err := l.agent.Open(ctx); err != nil {
		return err
	}
	lis, err := nbd.Listen("unix:" + sock)
	if err != nil {
		return err
	}
	if err := dom.OwnSocket(sock); err != nil {
		lis.Close()
		return err
	}
	l.nbd = nbd.NewServer(l.cfg.Logger)
	for _, e := range l.agent.NBDExports() {
		l.nbd.Add(e)
	}
	go l.nbd.Serve(lis)
	start := time.Now()
	if err := l.conn.Start(l.primary); err != nil {
		return err
	}
	banner, err := l.waitSSH(ctx, l.primary, 2*time.Minute)
	if err != nil {
		return fmt.Errorf("primary guest: %w; console: %s", err, tail(l.primaryConsole(), 5))
	}
	l.report.PrimaryBoot = time.Since(start)
	l.logf("primary %s booted from the agent's NBD front end in %v; port 22: %q", l.primary, l.report.PrimaryBoot.Round(100*time.Millisecond), banner)
	return nil
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

func (l *lab) primaryConsole() string {
	b, _ := os.ReadFile(l.path("site", "web-console.log"))
	return string(b)
}

// waitRecords waits until the primary guest reported n more records
// fsynced; it returns the highest number.
func (l *lab) waitRecords(ctx context.Context, n int) (int, error) {
	from := guest.LastFsynced(l.primaryConsole())
	deadline := time.Now().Add(2 * time.Minute)
	for {
		last := guest.LastFsynced(l.primaryConsole())
		if last >= from+n {
			return last, nil
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("the primary guest reported records %d..%d fsynced in 2 minutes, want %d more: %s", from, last, n, tail(l.primaryConsole(), 3))
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

func (l *lab) processed(ctx context.Context) uint64 {
	vm, err := l.ps.Journal().VM(ctx, journal.VMID("web"))
	if err != nil {
		return 0
	}
	return vm.ProcessedBytes
}

// testFailover boots a second guest from copy-on-write overlays of the
// newest point on the isolated network while the primary keeps running
// and replicating, then cleans it up.
func (l *lab) testFailover(ctx context.Context) error {
	if _, err := l.waitRecords(ctx, 50+l.rng.IntN(100)); err != nil {
		return err
	}
	s := l.stage("test failover to latest on the isolated network " + l.testnet)
	before := guest.LastFsynced(l.primaryConsole())
	p0, start := l.processed(ctx), time.Now()
	job, err := l.ps.Failover(ctx, processserver.FailoverRequest{VM: "web", Type: processserver.FailoverTest, Point: processserver.PointLatest, Network: l.testnet})
	s.measure(job, err, start, l.processed(ctx)-p0)
	if err != nil {
		return nil
	}
	dom := "ferry-" + l.id + "-rec-web-test"
	x, xerr := l.conn.DomainXML(dom, false)
	s.check("disks are NBD overlays (nothing copied)", xerr == nil && strings.Contains(x, "protocol='nbd'") && !strings.Contains(x, ".img'"),
		"domain %s: %v", dom, xerr)
	after, werr := l.waitRecords(ctx, 20)
	s.check("primary keeps running and writing", werr == nil, "records %d -> %d during the test (%v)", before, after, werr)
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	serr := l.agent.WaitSynced(sctx)
	cancel()
	s.check("replication continues", serr == nil, "agent synced: %v", serr)

	c := l.stage("clean up the test failover")
	job, err = l.ps.CleanupTest(ctx, "web")
	c.check("job succeeded", err == nil, "%v", jobOutcome(job, err))
	l.checkNothingLeft(c, dom, "test")
	return nil
}

// checkNothingLeft checks that no domain, disk export, scratch file or
// driver directory of a (test) failover remains.
func (l *lab) checkNothingLeft(s *Stage, dom, slot string) {
	ok, err := l.conn.Exists(dom)
	s.check("no domain left", err == nil && !ok, "domain %s exists: %v (%v)", dom, ok, err)
	serving := l.lc.Serving()
	s.check("no export left", len(serving) == 0, "serving %v", serving)
	_, err = os.Stat(l.path("ps", "vms", "web", slot))
	s.check("no scratch file left", errors.Is(err, os.ErrNotExist), "%s: %v", l.path("ps", "vms", "web", slot), err)
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
			l.checkNothingLeft(s, dom, "test")
		}
	}
	_, err := virt.Dial(ctx, "qemu+unix:///system?socket="+l.path("no-libvirt.sock"))
	s.check("an unreachable libvirt: refused", errors.Is(err, virt.ErrUnreachable), "%v", err)
	// A machine whose kernel this host does not have.
	spec := processserver.DomainSpecFor("ferry-"+l.id+"-nokernel", l.report.DomainType, processserver.Machine{Hardware: &virt.Hardware{
		Firmware: virt.FirmwareKernel, Kernel: "/boot/vmlinuz-ferry-missing"}}, "", "")
	spec.Disks = []virt.DiskSource{{Name: "os", File: l.path("site", "web-os.img")}}
	err = l.conn.Define(spec)
	ok, _ := l.conn.Exists(spec.Name)
	s.check("a missing kernel: refused", errors.Is(err, virt.ErrMissingFile) && !ok, "%v (domain defined: %v)", err, ok)
	return nil
}

// appPoint cuts an app-consistent point through the guest agent's
// fsfreeze: its file system must be clean without journal replay.
func (l *lab) appPoint(ctx context.Context) error {
	s := l.stage("app-consistent point through fsfreeze in the guest")
	if err := l.agent.MarkApp(ctx, "lab-app"); err != nil {
		s.check("freeze and mark", false, "%v", err)
		return nil
	}
	var p journal.Point
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		pts, _ := l.ps.Journal().Points(ctx, journal.VMID("web"))
		for _, pt := range pts {
			if pt.Consistency == journal.App {
				p = pt
			}
		}
		if p.ID != 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if p.ID == 0 {
		s.check("app-consistent point", false, "no app-consistent point processed within a minute")
		return nil
	}
	s.check("app-consistent point", true, "point %d", p.ID)
	fr, rec, err := l.checkPoint(ctx, "app", p.ID)
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
func (l *lab) checkPoint(ctx context.Context, name string, id journal.Seq) (guest.FsckResult, guest.Records, error) {
	path := l.path("checks", name+".img")
	vm, err := l.ps.Journal().VM(ctx, journal.VMID("web"))
	if err != nil {
		return guest.FsckResult{}, guest.Records{}, err
	}
	f, err := blockdev.CreateFile(path, vm.Disks[0].Size)
	if err != nil {
		return guest.FsckResult{}, guest.Records{}, err
	}
	err = l.ps.Journal().Materialize(ctx, journal.VMID("web"), id, 0, f, true)
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

// unplannedFailover loses the primary site while the guest writes and
// fails over to the latest point.
func (l *lab) unplannedFailover(ctx context.Context) error {
	if _, err := l.waitRecords(ctx, 30+l.rng.IntN(100)); err != nil {
		return err
	}
	s := l.stage("unplanned failover to latest while the guest writes, to the recovery network " + l.recnet)
	reported := guest.LastFsynced(l.primaryConsole())
	// Everything the guest fsynced so far passed the splitter; wait until
	// the process server acknowledged it, then lose the site.
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	err := l.agent.WaitSynced(sctx)
	cancel()
	if err != nil {
		return err
	}
	if err := l.conn.Destroy(l.primary); err != nil {
		return err
	}
	l.agent.Abort()
	l.nbd.Close()
	l.logf("primary site lost: domain destroyed, agent gone; the guest had reported record %d fsynced", reported)
	p0, start := l.processed(ctx), time.Now()
	job, err := l.ps.Failover(ctx, processserver.FailoverRequest{VM: "web", Type: processserver.FailoverUnplanned, Point: processserver.PointLatest})
	s.measure(job, err, start, l.processed(ctx)-p0)
	if err != nil || job.Point == nil {
		return nil
	}
	fr, rec, err := l.checkPoint(ctx, "unplanned", job.Point.ID)
	if err != nil {
		s.check("file system", false, "%v", err)
		return nil
	}
	s.check("e2fsck: consistent (journal replay allowed)", fr.Clean, "needed journal replay %v; e2fsck -fn: %s", fr.NeededRecovery, tail(fr.Output, 2))
	s.check("every record reported fsynced is there", rec.Last >= reported, "records 1..%d unbroken (+%d torn bytes); the guest reported %d fsynced before the cut", rec.Last, rec.Torn, reported)
	dom := "ferry-" + l.id + "-rec-web"
	console, _ := l.lc.Console(ctx, dom)
	want := fmt.Sprintf("workload from record %d", rec.Last+1)
	s.check("the recovered guest goes on from the point", strings.Contains(console, want), "console: %s", tail(console, 3))

	c := l.stage("commit")
	job, err = l.ps.Commit(ctx, "web")
	c.check("job succeeded", err == nil, "%s", jobOutcome(job, err))
	pts, _ := l.ps.Journal().Points(ctx, journal.VMID("web"))
	c.check("recovery points deleted", len(pts) == 0, "%d points left", len(pts))
	st, err := l.lc.State(ctx, dom)
	c.check("the recovered VM keeps running", st == "running", "%s %v", st, err)
	return nil
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
	if l.nbd != nil {
		l.nbd.Close()
	}
	if l.agent != nil {
		l.agent.Abort()
	}
	if l.ps != nil {
		l.ps.Close(ctx)
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
