package lab

import (
	"context"
	"fmt"
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
	"github.com/ferrydr/ferry/sim/guest"
)

// openMasterTarget starts the master target of the primary site, with the
// primary domains as its libvirt primary.
func (l *lab) openMasterTarget(ctx context.Context) error {
	prim := &mastertarget.LibvirtPrimary{
		FilePrimary: &mastertarget.FilePrimary{Disks: map[string]string{}, AlternateDir: l.path("site", "alternate")},
		Conn:        l.conn, Domains: map[string]string{}, ShutdownTimeout: 30 * time.Second,
	}
	for _, name := range []string{"web", "db"} {
		prim.Disks[name+":os"] = l.path("site", name+"-os.img")
		prim.Domains[name] = "ferry-" + l.id + "-" + name
	}
	mt, err := mastertarget.New(mastertarget.Config{DataDir: l.path("mt"), Listen: "127.0.0.1:0", Primary: prim,
		ProcessInterval: 2 * time.Second, Logger: l.cfg.Logger.With("site", "primary")})
	if err != nil {
		return err
	}
	if err := mt.Open(ctx); err != nil {
		return err
	}
	l.mt = mt
	return nil
}

// reverseAgent replicates a recovered domain's disk image back to the
// master target. The image is written by QEMU directly, so the agent scans
// it; the final point of a failback is cut after the guest shut down, when
// the disk no longer changes.
func (l *lab) reverseAgent(ctx context.Context, vm string) (*agent.Agent, error) {
	v, err := l.ps.Journal().VM(ctx, ferry.VMID(vm))
	if err != nil {
		return nil, err
	}
	dev, err := blockdev.OpenFile(l.path("ps", "vms", vm, "failover", "os.img"), true)
	if err != nil {
		return nil, err
	}
	rec := agent.LibvirtDomain{Conn: l.conn, Name: "ferry-" + l.id + "-rec-" + vm, ShutdownTimeout: 30 * time.Second}
	a, err := agent.New(agent.Config{VM: vm, Disks: []agent.Disk{{Name: "os", Device: dev}}, StateDir: l.path("rec", vm+"-agent"),
		Target: l.mt.Addr(), DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Epoch: uint64(v.Epoch), Mode: agent.ModeScan, ScanInterval: time.Second, CrashInterval: 5 * time.Second, IgnorePolicy: true,
		ShutdownMachine: rec.Shutdown, Logger: l.cfg.Logger.With("vm", vm, "direction", "reverse")})
	if err != nil {
		dev.Close()
		return nil, err
	}
	if err := a.Open(ctx); err != nil {
		return nil, err
	}
	l.extra = append(l.extra, a)
	return a, nil
}

// waitReverse waits until the master target holds a failback point of vm.
func (l *lab) waitReverse(ctx context.Context, a *agent.Agent, vm string) (mastertarget.ReverseStatus, error) {
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := a.WaitSynced(sctx); err != nil {
		return mastertarget.ReverseStatus{}, err
	}
	for {
		st, err := l.mt.ReprotectStatus(ctx, vm)
		if err == nil && st.Points > 0 {
			return st, nil
		}
		select {
		case <-sctx.Done():
			return mastertarget.ReverseStatus{}, fmt.Errorf("vm %s: no failback point at the master target: %w", vm, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// failbackOriginal reprotects web onto its primary's own disk, fails it
// back with synchronization before failover, commits, and reprotects it
// forward again; the primary boots on its agent's NBD front end with the
// writes the guest made at the recovery site.
func (l *lab) failbackOriginal(ctx context.Context) error {
	web := l.vms["web"]
	s := l.stage("reprotect web to the original location (only what differs goes back)")
	job, err := l.ps.Reprotect(ctx, "web", ferry.LocationOriginal, "")
	s.check("job succeeded", err == nil, "%s", jobOutcome(job, err))
	if err != nil {
		return nil
	}
	st, err := l.conn.State(web.domain)
	s.check("the primary domain stays shut down", err == nil && st == virt.ShutOff, "%s %v", st, err)
	rev, err := l.reverseAgent(ctx, "web")
	if err != nil {
		return err
	}
	rs, err := l.waitReverse(ctx, rev, "web")
	if err != nil {
		s.check("reverse replication", false, "%v", err)
		return nil
	}
	size := int64(64 << 20)
	s.check("only what differs was sent", int64(rs.ReceivedBytes) < size/4, "%d KiB received for a %d MiB disk (%d failback points)",
		rs.ReceivedBytes>>10, size>>20, rs.Points)

	f := l.stage("fail web back to the original location, synchronizing before failover")
	// The primary boots on its agent: start it first, with the epoch the
	// forward reprotect will give; it waits until then.
	v, err := l.ps.Journal().VM(ctx, ferry.VMID("web"))
	if err != nil {
		return err
	}
	if err := l.serve(ctx, web, uint64(v.Epoch)+1, "web-agent-forward"); err != nil {
		return err
	}
	recLast, ok := l.failback(ctx, f, "web", ferry.SyncBefore, web.domain)
	if !ok {
		return nil
	}
	from := l.waitConsole(ctx, web, "workload from record")
	f.check("it holds the writes made at the recovery site", from > recLast, "the primary goes on from record %d; the recovered guest reported %d fsynced", from, recLast)

	c := l.stage("commit the failback of web")
	job, err = l.ps.Commit(ctx, "web")
	c.check("job succeeded", err == nil, "%s", jobOutcome(job, err))
	recDom := "ferry-" + l.id + "-rec-web"
	exists, _ := l.conn.Exists(recDom)
	c.check("the recovery-site domain is deleted", !exists, "exists %v", exists)

	r := l.stage("reprotect web forward again (the waiting agent resumes, by hash)")
	job, err = l.ps.Reprotect(ctx, "web", "", "")
	r.check("job succeeded", err == nil, "%s", jobOutcome(job, err))
	if _, err := l.waitRecords(ctx, web, 20); err != nil {
		return err
	}
	reported := guest.LastFsynced(web.consoleText())
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = web.agent.WaitSynced(sctx)
	cancel()
	r.check("the primary's agent is in sync", err == nil, "%v", err)
	if err != nil {
		return nil
	}
	p, _, err := l.ps.Journal().CutPoint(ctx, ferry.VMID("web"), ferry.PointLatest, time.Now())
	if err != nil {
		r.check("a new point", false, "%v", err)
		return nil
	}
	fr, rec, err := l.checkPoint(ctx, "web", "forward", p.ID)
	if err != nil {
		r.check("file system", false, "%v", err)
		return nil
	}
	r.check("e2fsck: consistent (journal replay allowed)", fr.Clean, "needed journal replay %v", fr.NeededRecovery)
	r.check("the point holds the cycle's records", rec.Last >= reported, "records 1..%d unbroken; the primary reported %d fsynced before the cut", rec.Last, reported)
	return nil
}

// failbackAlternate reprotects db onto new disks at the primary site and
// fails it back there (synchronizing during failover only): a new domain
// with db's hardware boots on them.
func (l *lab) failbackAlternate(ctx context.Context) error {
	db := l.vms["db"]
	c := l.stage("commit the planned failover of db")
	job, err := l.ps.Commit(ctx, "db")
	c.check("job succeeded", err == nil, "%s", jobOutcome(job, err))
	s := l.stage("reprotect db to an alternate location, synchronizing during failover only (nothing moves before the failback)")
	job, err = l.ps.Reprotect(ctx, "db", ferry.LocationAlternate, ferry.SyncDuring)
	s.check("job succeeded", err == nil, "%s", jobOutcome(job, err))
	if err != nil {
		return nil
	}
	rev, err := l.reverseAgent(ctx, "db")
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = rev.WaitSynced(sctx)
	cancel()
	if err != nil {
		s.check("reverse replication", false, "%v", err)
		return nil
	}
	// The guest keeps writing; its agent only tracks what changes.
	time.Sleep(3 * time.Second)
	rs, err := l.mt.ReprotectStatus(ctx, "db")
	as := rev.Stats()
	s.check("nothing moves before the failback", err == nil && rs.ReceivedBytes == 0 && as.Deferred && as.SentBytes == 0 && as.HashBytes == 0,
		"the agent sent %d bytes and got %d of hashes; the master target received %d (%v)", as.SentBytes, as.HashBytes, rs.ReceivedBytes, err)
	f := l.stage("fail db back to the alternate location, synchronizing during failover only")
	alt := mastertarget.AlternateName(db.domain)
	recLast, ok := l.failback(ctx, f, "db", ferry.SyncDuring, alt)
	if !ok {
		return nil
	}
	x, _ := l.conn.DomainXML(alt, true)
	f.check("its disk is the alternate one", strings.Contains(x, l.path("site", "alternate", "db")), "domain %s", alt)
	altGuest := &protected{name: "db-alternate", domain: alt, console: l.path("site", "alternate", "db", "console.log")}
	from := l.waitConsole(ctx, altGuest, "workload from record")
	f.check("it holds the writes made at the recovery site", from > recLast, "the new domain goes on from record %d; the recovered guest reported %d fsynced", from, recLast)
	st, _ := l.conn.State(db.domain)
	f.check("the original domain stays shut down", st == virt.ShutOff, "state %s", st)
	cm := l.stage("commit the failback of db")
	job, err = l.ps.Commit(ctx, "db")
	cm.check("job succeeded", err == nil, "%s", jobOutcome(job, err))
	return nil
}

// failback fails vm back and waits for the domain it boots at the primary
// site to answer SSH. It returns the last record the recovered guest
// reported fsynced before it was shut down.
func (l *lab) failback(ctx context.Context, f *Stage, vm string, sync ferry.SyncMode, booted string) (int, bool) {
	recDom := "ferry-" + l.id + "-rec-" + vm
	start := time.Now()
	job, err := l.ps.Failback(ctx, vm, sync, ferry.PointLatest)
	f.measure(job, err, start, 0)
	recConsole, _ := l.lc.Console(ctx, recDom)
	if err != nil {
		return 0, false
	}
	st, _ := l.conn.State(recDom)
	f.check("the recovered guest was shut down", st == virt.ShutOff, "state %s", st)
	banner, err := l.waitSSH(ctx, booted, 3*time.Minute)
	f.bootedAt(start, banner)
	f.check("the primary site's domain boots", err == nil, "%s: %s %v", booted, banner, err)
	return guest.LastFsynced(recConsole), err == nil
}

// serve starts a protected VM's agent again on its NBD front end.
func (l *lab) serve(ctx context.Context, p *protected, epoch uint64, state string) error {
	dev, err := blockdev.OpenFile(p.image, false)
	if err != nil {
		return err
	}
	dom := agent.LibvirtDomain{Conn: l.conn, Name: p.domain, ShutdownTimeout: 30 * time.Second}
	machine, err := dom.Describe(map[string]string{"os": p.image}, true)
	if err != nil {
		return err
	}
	p.agent, err = agent.New(agent.Config{VM: p.name, Disks: []agent.Disk{{Name: "os", Device: dev}}, StateDir: l.path("site", state),
		Target: l.ps.Addr(), DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Epoch: epoch, Mode: agent.ModeSplitter, CrashInterval: 2 * time.Second, IgnorePolicy: true, Machine: machine,
		Freeze: dom.Freeze, Thaw: dom.Thaw, ShutdownMachine: dom.Shutdown, Logger: l.cfg.Logger.With("vm", p.name)})
	if err != nil {
		return err
	}
	if err := p.agent.Open(ctx); err != nil {
		return err
	}
	sock := l.path("site", p.name+".sock")
	lis, err := nbd.Listen("unix:" + sock)
	if err != nil {
		return err
	}
	uid, err := dom.OwnSocket(sock)
	if err != nil {
		lis.Close()
		return err
	}
	p.nbd = nbd.NewServer(l.cfg.Logger, nbd.Access{UIDs: []int{uid}})
	for _, e := range p.agent.NBDExports() {
		p.nbd.Add(e)
	}
	go p.nbd.Serve(lis)
	return nil
}

// waitConsole waits for a console line that starts with prefix and a
// number, and returns the number (0 when none came within two minutes).
func (l *lab) waitConsole(ctx context.Context, p *protected, prefix string) int {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		text := p.consoleText()
		if i := strings.LastIndex(text, prefix); i >= 0 {
			var n int
			if _, err := fmt.Sscanf(text[i+len(prefix):], " %d", &n); err == nil {
				return n
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return 0
}

// bootedAt ends a failback's RTO when the primary answered: the job
// returns once the master target started the domain, its boot follows.
func (s *Stage) bootedAt(start time.Time, banner string) {
	if s.Job == nil {
		return
	}
	jobEnd := start.Add(s.RTO)
	s.RTO, s.Banner = time.Since(start), banner
	s.Boot = time.Since(jobEnd)
	for _, st := range s.Job.Steps {
		if st.Name == "master target: start primary VM" {
			s.Boot += st.Wall
		}
	}
}
