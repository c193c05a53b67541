// Package clusterdrill is the drill of a recovery site that scales out:
// an S3-compatible server (versitygw), a three-member etcd cluster and
// several ferry-ps processes sharing the protected VMs, each run as its own
// process on loopback, with in-process agents writing seeded workloads and
// keeping the ground truth of every point they ask for. The drill kills a
// process server with SIGKILL, takes the S3 server away for 30 s and the
// etcd leader for 10 s while the agents write, and checks that the VMs are
// taken over in a bounded time, that nothing acknowledged is lost, that
// every recovery point of every VM equals its ground truth byte for byte,
// and that a test failover and an unplanned failover of a VM that moved
// succeed with the right disks.
package clusterdrill

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/objstore"
	"github.com/ferrydr/ferry/processserver"
	"github.com/ferrydr/ferry/processserver/client"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// Config configures the drill.
type Config struct {
	Seed uint64
	// Dir holds every server's files and the agents' state.
	Dir string
	// Out receives the drill's progress, one line per step.
	Out io.Writer
	// Logger receives the agents' logs (the servers log to files in Dir).
	Logger *slog.Logger
	// PS is the ferry-ps binary (default: beside the drill's executable,
	// in PATH, or built from source).
	PS string
	// Servers and VMs (default 3 and 6).
	Servers, VMs int
	// Phase is how long the agents write between the drill's events
	// (default 10 s).
	Phase time.Duration
	// S3Outage and EtcdOutage are how long the S3 server and the etcd
	// leader are down (default 30 s and 10 s).
	S3Outage, EtcdOutage time.Duration
	// TTL is the process servers' etcd lease (default 3 s).
	TTL time.Duration
	// HotWindow is the process servers' (default 5 s): older records are
	// sealed into the bucket and leave their disks.
	HotWindow time.Duration
}

// Report is what the drill found.
type Report struct {
	Seed     uint64
	Lines    []string
	Failures []string
}

func (r *Report) fail(format string, args ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
}

// Print writes the report.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "cluster drill, seed %d\n", r.Seed)
	for _, l := range r.Lines {
		fmt.Fprintln(w, "  "+l)
	}
	if len(r.Failures) == 0 {
		fmt.Fprintln(w, "every check passed")
		return
	}
	fmt.Fprintf(w, "%d check(s) FAILED:\n", len(r.Failures))
	for _, f := range r.Failures {
		fmt.Fprintln(w, "  FAILED: "+f)
	}
}

const (
	accessKey = "ferry-drill"
	secretKey = "ferry-drill-secret-key"
	bucket    = "ferry"
	diskSize  = 4 << 20
	bs        = blockdev.BlockSize
)

type drill struct {
	cfg Config
	rep *Report
	rng *rand.Rand
	out io.Writer

	s3      *proc
	s3Dir   string
	etcd    []*proc
	etcdEPs []string
	ps      []*proc
	psAddr  []string
	psAdmin []string // each process server's /metrics
	// peakLocal is the most payload bytes any process server held on its
	// disk at once, sampled every second while the drill ran.
	peakMu    sync.Mutex
	peakLocal float64
	sampling  context.CancelFunc
	hookDir   string
	etcdc     *clientv3.Client

	vms []*vmRun
}

// vmRun is one protected VM: its disks, its agent and the ground truth of
// every point it asked for.
type vmRun struct {
	name  string
	disks []*blockdev.Memory
	a     *agent.Agent
	rng   *rand.Rand

	mu      sync.Mutex
	truth   map[string][]*blockdev.Memory
	marks   int
	written int64         // bytes written through the splitter
	writing time.Duration // time the workload ran
}

// Drill runs the cluster drill.
func Drill(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Servers == 0 {
		cfg.Servers = 3
	}
	if cfg.VMs == 0 {
		cfg.VMs = 6
	}
	if cfg.Phase == 0 {
		cfg.Phase = 10 * time.Second
	}
	if cfg.S3Outage == 0 {
		cfg.S3Outage = 30 * time.Second
	}
	if cfg.EtcdOutage == 0 {
		cfg.EtcdOutage = 10 * time.Second
	}
	if cfg.TTL == 0 {
		cfg.TTL = 3 * time.Second
	}
	if cfg.HotWindow == 0 {
		cfg.HotWindow = 5 * time.Second
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &drill{cfg: cfg, rep: &Report{Seed: cfg.Seed}, rng: rand.New(rand.NewPCG(cfg.Seed, 0xc1)), out: cfg.Out}
	defer d.teardown()
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"servers", d.setup},
		{"protect", d.protect},
		{"kill a process server", d.killOne},
		{"object store outage", d.s3Outage},
		{"etcd leader outage", d.etcdOutage},
		{"verify every point", d.verifyAll},
		{"test failover of a VM that moved", d.testFailover},
		{"unplanned failover of a VM that moved", d.unplanned},
		{"storage", d.storage},
	}
	for _, s := range steps {
		if err := s.fn(ctx); err != nil {
			return d.rep, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return d.rep, nil
}

func (d *drill) line(format string, args ...any) {
	l := fmt.Sprintf(format, args...)
	d.rep.Lines = append(d.rep.Lines, l)
	fmt.Fprintln(d.out, "== "+l)
}

func (d *drill) path(parts ...string) string {
	return filepath.Join(append([]string{d.cfg.Dir}, parts...)...)
}

// setup starts the S3 server, etcd and the process servers.
func (d *drill) setup(ctx context.Context) error {
	vgw, err := findBinary("versitygw", "")
	if err != nil {
		return fmt.Errorf("%w (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)", err)
	}
	etcdBin, err := findBinary("etcd", "")
	if err != nil {
		return fmt.Errorf("%w (apt-get install etcd-server)", err)
	}
	psBin, err := findBinary("ferry-ps", d.cfg.PS)
	if err != nil {
		if psBin, err = buildPS(d.cfg.Dir); err != nil {
			return err
		}
	}
	d.s3Dir = d.path("s3")
	d.hookDir = d.path("hook-vms")
	for _, dir := range []string{d.s3Dir, d.hookDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	s3Addr, err := freeAddr()
	if err != nil {
		return err
	}
	d.s3 = &proc{name: "versitygw", bin: vgw, addr: s3Addr, log: d.path("versitygw.log"),
		args: []string{"--port", s3Addr, "--access", accessKey, "--secret", secretKey, "posix", d.s3Dir}}
	if err := d.s3.start(ctx); err != nil {
		return err
	}
	if err := objstore.CreateBucket(ctx, objstore.Config{Endpoint: s3Addr, AccessKey: accessKey, SecretKey: secretKey, Bucket: bucket}); err != nil {
		return err
	}
	if err := d.startEtcd(ctx, etcdBin); err != nil {
		return err
	}
	if d.etcdc, err = clientv3.New(clientv3.Config{Endpoints: d.etcdEPs, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}); err != nil {
		return err
	}
	hook := d.path("compute-hook.sh")
	if err := os.WriteFile(hook, []byte(hookScript), 0o755); err != nil {
		return err
	}
	key := d.path("journal.key")
	kb := make([]byte, 32)
	for i := range kb {
		kb[i] = byte(d.rng.Uint32())
	}
	if err := os.WriteFile(key, kb, 0o600); err != nil {
		return err
	}
	for i := range d.cfg.Servers {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		admin, err := freeAddr()
		if err != nil {
			return err
		}
		name := fmt.Sprintf("ps-%d", i+1)
		p := &proc{name: name, bin: psBin, addr: addr, log: d.path(name + ".log"),
			env: []string{"AWS_ACCESS_KEY_ID=" + accessKey, "AWS_SECRET_ACCESS_KEY=" + secretKey, "FERRY_HOOK_DIR=" + d.hookDir},
			args: []string{"serve", "--insecure", "--data", d.path(name), "--listen", addr, "--metrics", admin, "--hot-window", d.cfg.HotWindow.String(),
				"--compute-hook", hook, "--process-interval", "1s", "--key-file", key,
				"--store", "s3://" + bucket + "/site-b", "--s3-endpoint", "http://" + s3Addr, "--store-timeout", "5s",
				"--etcd", strings.Join(d.etcdEPs, ","), "--cluster-name", name, "--cluster-ttl", d.cfg.TTL.String()}}
		if err := p.start(ctx); err != nil {
			return err
		}
		d.ps, d.psAddr, d.psAdmin = append(d.ps, p), append(d.psAddr, addr), append(d.psAdmin, admin)
	}
	if err := d.waitMembers(ctx, d.cfg.Servers, time.Minute); err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	d.sampling = cancel
	go d.sample(sctx)
	d.line("servers: versitygw (S3) at %s, etcd of %d members, %d ferry-ps (etcd lease %v, hot window %v, shipping before acknowledging)", s3Addr, len(d.etcd), len(d.ps), d.cfg.TTL, d.cfg.HotWindow)
	return nil
}

func (d *drill) startEtcd(ctx context.Context, bin string) error {
	type member struct{ name, client, peer string }
	var ms []member
	var initial []string
	for i := range 3 {
		c, err := freeAddr()
		if err != nil {
			return err
		}
		p, err := freeAddr()
		if err != nil {
			return err
		}
		m := member{fmt.Sprintf("etcd-%d", i+1), c, p}
		ms = append(ms, m)
		initial = append(initial, m.name+"=http://"+m.peer)
	}
	for _, m := range ms {
		p := &proc{name: m.name, bin: bin, log: d.path(m.name + ".log"),
			args: []string{"--name", m.name, "--data-dir", d.path(m.name),
				"--listen-client-urls", "http://" + m.client, "--advertise-client-urls", "http://" + m.client,
				"--listen-peer-urls", "http://" + m.peer, "--initial-advertise-peer-urls", "http://" + m.peer,
				"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new", "--log-level", "warn"}}
		if err := p.start(ctx); err != nil {
			return err
		}
		p.addr = m.client
		d.etcd, d.etcdEPs = append(d.etcd, p), append(d.etcdEPs, m.client)
	}
	// The members elect a leader once they see each other.
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if _, err := d.leader(ctx); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("etcd elected no leader within a minute")
}

// leader is the index of etcd's leader.
func (d *drill) leader(ctx context.Context) (int, error) {
	c, err := clientv3.New(clientv3.Config{Endpoints: d.etcdEPs, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	for i, ep := range d.etcdEPs {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := c.Status(sctx, ep)
		cancel()
		if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
			return i, nil
		}
	}
	return 0, errors.New("no leader")
}

func (d *drill) waitMembers(ctx context.Context, n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := d.etcdc.Get(gctx, "/ferry/members/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		cancel()
		if err == nil && resp.Count >= int64(n) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d process servers are members after %v, want %d (logs in %s)", countOf(resp), within, n, d.cfg.Dir)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func countOf(r *clientv3.GetResponse) int64 {
	if r == nil {
		return 0
	}
	return r.Count
}

// owners reads who owns each VM from etcd.
func (d *drill) owners(ctx context.Context) (map[string]string, error) {
	gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := d.etcdc.Get(gctx, "/ferry/owners/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), "/ferry/owners/")] = string(kv.Value)
	}
	return out, nil
}

// protect starts the agents, each at a process server of its own, and
// waits for their initial copies.
func (d *drill) protect(ctx context.Context) error {
	start := time.Now()
	for i := range d.cfg.VMs {
		v := &vmRun{name: fmt.Sprintf("vm-%d", i+1), rng: rand.New(rand.NewPCG(d.cfg.Seed, uint64(i))), truth: map[string][]*blockdev.Memory{}}
		cfg := agent.Config{VM: v.name, StateDir: d.path("agents", v.name), IgnorePolicy: true, Heartbeat: time.Second,
			DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
			Logger:      d.cfg.Logger.With("vm", v.name), Registerer: prometheus.NewRegistry(),
			Machine: &ferryv1.MachineInfo{Os: "linux", MobilityAgentVersion: "9.55", Hypervisor: "kvm", SshEnabledAtBoot: true, SshFirewallAllowed: true}}
		// Each agent knows every process server, starting at its own.
		for k := range d.psAddr {
			addr := d.psAddr[(i+k)%len(d.psAddr)]
			if k == 0 {
				cfg.Target = addr
			} else {
				cfg.Targets = append(cfg.Targets, addr)
			}
		}
		for n := range 2 {
			m := blockdev.NewMemory(diskSize / int64(n+1))
			v.fill(m)
			v.disks = append(v.disks, m)
			cfg.Disks = append(cfg.Disks, agent.Disk{Name: fmt.Sprintf("disk%d", n), Device: m})
		}
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return err
		}
		a, err := agent.New(cfg)
		if err != nil {
			return err
		}
		if err := a.Open(ctx); err != nil {
			return err
		}
		v.a = a
		d.vms = append(d.vms, v)
	}
	if err := d.syncAll(ctx, 2*time.Minute); err != nil {
		return err
	}
	own, err := d.owners(ctx)
	if err != nil {
		return err
	}
	d.line("%d VMs protected, initial copies done in %v; owners %s", len(d.vms), time.Since(start).Round(100*time.Millisecond), describeOwners(own))
	if err := d.write(ctx, d.cfg.Phase, nil); err != nil {
		return err
	}
	d.line("writing %v: %d marks so far", d.cfg.Phase, d.marks())
	return nil
}

func describeOwners(own map[string]string) string {
	by := map[string][]string{}
	for vm, ps := range own {
		by[ps] = append(by[ps], vm)
	}
	var parts []string
	for ps, vms := range by {
		sort.Strings(vms)
		parts = append(parts, ps+": "+strings.Join(vms, " "))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

// fill writes the disk's starting content before protection.
func (v *vmRun) fill(m *blockdev.Memory) {
	buf := make([]byte, bs)
	for off := int64(0); off < m.Size(); off += bs {
		if v.rng.IntN(4) == 0 {
			for i := range buf {
				buf[i] = byte(v.rng.Uint32())
			}
			m.WriteAt(context.Background(), buf, off)
		}
	}
}

// step writes a few blocks through the agent's splitter and, now and
// then, asks for a point and keeps the disks' content as its truth.
func (v *vmRun) step(ctx context.Context, n int) error {
	di := v.rng.IntN(len(v.disks))
	size := v.disks[di].Size()
	nb := int64(1 + v.rng.IntN(8))
	off := v.rng.Int64N(size/bs-nb+1) * bs
	data := make([]byte, nb*bs)
	if v.rng.IntN(5) > 0 {
		for i := range data {
			data[i] = byte(v.rng.Uint32() >> (i % 7))
		}
	}
	if _, err := v.a.Disk(di).WriteAt(ctx, data, off); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.written += int64(len(data))
	if n%20 != 19 {
		return nil
	}
	v.marks++
	tag := fmt.Sprintf("m%d", v.marks)
	if !v.a.Mark(false, tag) {
		return nil
	}
	snaps := make([]*blockdev.Memory, len(v.disks))
	for i, m := range v.disks {
		snaps[i] = m.Snapshot()
	}
	v.truth[tag] = snaps
	return nil
}

// write runs every VM's workload for dur; during calls fn (when set) at
// a moment of its choosing, while the agents write.
func (d *drill) write(ctx context.Context, dur time.Duration, during func(ctx context.Context) error) error {
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make([]error, len(d.vms))
	for i, v := range d.vms {
		if v.a == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			defer func() {
				v.mu.Lock()
				v.writing += time.Since(start)
				v.mu.Unlock()
			}()
			for n := 0; wctx.Err() == nil; n++ {
				if err := v.step(wctx, n); err != nil && wctx.Err() == nil {
					errs[i] = fmt.Errorf("%s: %w", v.name, err)
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	var derr error
	if during != nil {
		derr = during(ctx)
	} else {
		select {
		case <-time.After(dur):
		case <-ctx.Done():
		}
	}
	cancel()
	wg.Wait()
	return errors.Join(append(errs, derr)...)
}

func (d *drill) marks() int {
	n := 0
	for _, v := range d.vms {
		v.mu.Lock()
		n += len(v.truth)
		v.mu.Unlock()
	}
	return n
}

// syncAll waits until every agent has everything acknowledged.
func (d *drill) syncAll(ctx context.Context, within time.Duration) error {
	sctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for _, v := range d.vms {
		if v.a == nil {
			continue
		}
		if err := v.a.WaitSynced(sctx); err != nil {
			return fmt.Errorf("%s: %w (acknowledged up to %d)", v.name, err, v.a.Stats().Acked)
		}
	}
	return nil
}

// killOne kills a process server that owns VMs with SIGKILL at a seeded
// moment while the agents write, and measures how long its VMs are
// without an owner.
func (d *drill) killOne(ctx context.Context) error {
	own, err := d.owners(ctx)
	if err != nil {
		return err
	}
	var candidates []int
	for i, p := range d.ps {
		for _, ps := range own {
			if ps == p.name {
				candidates = append(candidates, i)
				break
			}
		}
	}
	if len(candidates) == 0 {
		return errors.New("no process server owns a VM")
	}
	k := candidates[d.rng.IntN(len(candidates))]
	victim := d.ps[k]
	at := d.cfg.Phase/4 + time.Duration(d.rng.Int64N(int64(d.cfg.Phase/2)))
	var moved []string
	acked := map[string]uint64{}
	var took time.Duration
	err = d.write(ctx, 0, func(ctx context.Context) error {
		time.Sleep(at)
		own, err := d.owners(ctx)
		if err != nil {
			return err
		}
		for vm, ps := range own {
			if ps == victim.name {
				moved = append(moved, vm)
			}
		}
		sort.Strings(moved)
		for _, v := range d.vms {
			acked[v.name] = v.a.Stats().Acked
		}
		killed := time.Now()
		victim.kill()
		for {
			own, err := d.owners(ctx)
			if err == nil && allOwnedElsewhere(own, moved, victim.name) {
				took = time.Since(killed)
				break
			}
			if time.Since(killed) > time.Minute {
				return fmt.Errorf("%s's VMs %v not taken over a minute after the kill", victim.name, moved)
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(d.cfg.Phase - at)
		return nil
	})
	if err != nil {
		return err
	}
	bound := 3 * d.cfg.TTL
	d.line("kill -9 %s at +%v of the phase (it owned %s): its VMs owned by the others %v after the kill (bound %v: the lease's TTL and a restore)",
		victim.name, at.Round(100*time.Millisecond), strings.Join(moved, " "), took.Round(10*time.Millisecond), bound)
	if took > bound {
		d.rep.fail("takeover after the kill took %v, above %v", took, bound)
	}
	if err := d.syncAll(ctx, 2*time.Minute); err != nil {
		return err
	}
	// What the agents had acknowledged when the server died is at the new
	// owners, and no agent had to resync (it would, had a receiver lost
	// anything it acknowledged).
	durable, err := d.durable(ctx)
	if err != nil {
		return err
	}
	lost := 0
	for _, vm := range moved {
		if durable[vm] < acked[vm] {
			lost++
			d.rep.fail("%s: acknowledged up to %d at the kill, the new owner holds %d", vm, acked[vm], durable[vm])
		}
	}
	d.line("acknowledged at the kill vs durable at the new owners: %d of %d moved VMs short (0 acknowledged writes lost)", lost, len(moved))
	if err := victim.start(ctx); err != nil {
		return err
	}
	if err := d.waitMembers(ctx, len(d.ps), time.Minute); err != nil {
		return err
	}
	d.line("%s started again and joined; owners now %s", victim.name, d.ownersLine(ctx))
	return nil
}

func (d *drill) ownersLine(ctx context.Context) string {
	own, err := d.owners(ctx)
	if err != nil {
		return err.Error()
	}
	return describeOwners(own)
}

func allOwnedElsewhere(own map[string]string, vms []string, dead string) bool {
	for _, vm := range vms {
		if ps, ok := own[vm]; !ok || ps == dead {
			return false
		}
	}
	return true
}

// durable asks every live process server for the durable sequence of the
// VMs it holds, keeping the owners' answers.
func (d *drill) durable(ctx context.Context) (map[string]uint64, error) {
	own, err := d.owners(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for i, p := range d.ps {
		if !p.running() {
			continue
		}
		cc, err := grpc.NewClient(d.psAddr[i], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		resp, err := ferryv1.NewRecoveryClient(cc).ListVMs(ctx, &ferryv1.ListVMsRequest{})
		cc.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: list vms: %w", p.name, err)
		}
		for _, vm := range resp.GetVms() {
			if own[vm.GetName()] == p.name {
				out[vm.GetName()] = vm.GetDurableSeq()
			}
		}
	}
	return out, nil
}

// s3Outage kills the S3 server while the agents write and starts it
// again after S3Outage: nothing is acknowledged meanwhile, the events say
// so, and replication resumes.
func (d *drill) s3Outage(ctx context.Context) error {
	var stalled bool
	var resumed time.Duration
	err := d.write(ctx, 0, func(ctx context.Context) error {
		time.Sleep(d.cfg.Phase / 3)
		d.s3.kill()
		// Shipments in flight fail within the store timeout (5 s); from
		// then on nothing more is acknowledged.
		time.Sleep(6 * time.Second)
		before := d.acked()
		time.Sleep(d.cfg.S3Outage - 6*time.Second)
		after := d.acked()
		stalled = slices.Equal(before, after)
		if err := d.s3.start(ctx); err != nil {
			return err
		}
		back := time.Now()
		// The agents send what waited; it is acknowledged again.
		for !d.allMoved(after) {
			if time.Since(back) > 2*time.Minute {
				return errors.New("replication did not resume within 2 min of the object store's return")
			}
			time.Sleep(50 * time.Millisecond)
		}
		resumed = time.Since(back)
		time.Sleep(d.cfg.Phase / 3)
		return nil
	})
	if err != nil {
		return err
	}
	if err := d.syncAll(ctx, 2*time.Minute); err != nil {
		return err
	}
	down, up := d.events(ctx, processserver.EventNotDurable), d.events(ctx, processserver.EventDurableAgain)
	d.line("S3 server down %v while writing: acknowledgements stopped %v; events: %s %d, %s %d; every agent acknowledged again %v after its return",
		d.cfg.S3Outage, stalled, processserver.EventNotDurable, down, processserver.EventDurableAgain, up, resumed.Round(10*time.Millisecond))
	if !stalled {
		d.rep.fail("records were acknowledged while the object store was down")
	}
	if down == 0 || up == 0 {
		d.rep.fail("the events do not tell the object store's outage (%d down, %d back)", down, up)
	}
	return nil
}

func (d *drill) acked() []uint64 {
	var out []uint64
	for _, v := range d.vms {
		if v.a != nil {
			out = append(out, v.a.Stats().Acked)
		}
	}
	return out
}

// allMoved reports whether every agent acknowledged more than it had.
func (d *drill) allMoved(was []uint64) bool {
	now := d.acked()
	for i := range now {
		if now[i] <= was[i] {
			return false
		}
	}
	return true
}

// events counts the events of a kind on every live process server.
func (d *drill) events(ctx context.Context, kind string) int {
	n := 0
	for i, p := range d.ps {
		if !p.running() {
			continue
		}
		cc, err := grpc.NewClient(d.psAddr[i], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			continue
		}
		resp, err := ferryv1.NewRecoveryClient(cc).ListEvents(ctx, &ferryv1.ListEventsRequest{})
		cc.Close()
		if err != nil {
			continue
		}
		for _, e := range resp.GetEvents() {
			if e.GetKind() == kind {
				n++
			}
		}
	}
	return n
}

// etcdOutage kills etcd's leader for EtcdOutage while the agents write.
func (d *drill) etcdOutage(ctx context.Context) error {
	var who string
	before, err := d.owners(ctx)
	if err != nil {
		return err
	}
	lostBefore := d.events(ctx, processserver.EventMembershipLost)
	err = d.write(ctx, 0, func(ctx context.Context) error {
		time.Sleep(d.cfg.Phase / 3)
		l, err := d.leader(ctx)
		if err != nil {
			return err
		}
		who = d.etcd[l].name
		d.etcd[l].kill()
		time.Sleep(d.cfg.EtcdOutage)
		if err := d.etcd[l].start(ctx); err != nil {
			return err
		}
		time.Sleep(d.cfg.Phase / 3)
		return nil
	})
	if err != nil {
		return err
	}
	start := time.Now()
	if err := d.syncAll(ctx, 2*time.Minute); err != nil {
		return err
	}
	after, err := d.owners(ctx)
	if err != nil {
		return err
	}
	moved := 0
	for vm, ps := range before {
		if after[vm] != ps {
			moved++
		}
	}
	lost := d.events(ctx, processserver.EventMembershipLost) - lostBefore
	d.line("etcd leader %s down %v while writing: %d membership(s) lost (events), %d VM(s) changed owner; synced %v after",
		who, d.cfg.EtcdOutage, lost, moved, time.Since(start).Round(10*time.Millisecond))
	return nil
}

// follow is a connection to any process server that follows calls to the
// VM's owner.
func (d *drill) follow() (*grpc.ClientConn, func(), error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20))}
	owners := client.NewOwners(opts...)
	var addr string
	for i, p := range d.ps {
		if p.running() {
			addr = d.psAddr[i]
			break
		}
	}
	cc, err := grpc.NewClient(addr, append(opts, grpc.WithChainUnaryInterceptor(owners.Unary), grpc.WithChainStreamInterceptor(owners.Stream))...)
	if err != nil {
		owners.Close()
		return nil, nil, err
	}
	return cc, func() { cc.Close(); owners.Close() }, nil
}

// verifyAll checks every point of every VM against its ground truth, and
// the latest against the disks now.
func (d *drill) verifyAll(ctx context.Context) error {
	if err := d.syncAll(ctx, 2*time.Minute); err != nil {
		return err
	}
	cc, done, err := d.follow()
	if err != nil {
		return err
	}
	defer done()
	rc := ferryv1.NewRecoveryClient(cc)
	checked, differ, missing := 0, 0, 0
	for _, v := range d.vms {
		v.mu.Lock()
		want := len(v.truth)
		v.mu.Unlock()
		// Points appear once the owner has processed (every second).
		var pts []*ferryv1.RecoveryPoint
		deadline := time.Now().Add(time.Minute)
		for {
			resp, err := rc.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: v.name})
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			pts = resp.GetPoints()
			if d.tagged(v, pts) >= want || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if got := d.tagged(v, pts); got != want {
			missing += want - got
			d.rep.fail("%s: %d of %d marked points exist", v.name, got, want)
		}
		for _, p := range pts {
			v.mu.Lock()
			truth, ok := v.truth[p.GetTag()]
			v.mu.Unlock()
			if !ok {
				continue
			}
			for i, m := range truth {
				same, err := exportEquals(ctx, cc, v.name, fmt.Sprint(p.GetId()), fmt.Sprintf("disk%d", i), m)
				if err != nil {
					return err
				}
				if !same {
					differ++
					d.rep.fail("%s point %d (%s) disk%d differs from its ground truth", v.name, p.GetId(), p.GetTag(), i)
				}
			}
			checked++
		}
		for i, m := range v.disks {
			same, err := exportEquals(ctx, cc, v.name, "latest", fmt.Sprintf("disk%d", i), m)
			if err != nil {
				return err
			}
			if !same {
				d.rep.fail("%s: the latest point's disk%d differs from the disk", v.name, i)
			}
		}
	}
	resyncs := 0
	for _, v := range d.vms {
		if v.a.Stats().HashBytes > 0 {
			resyncs++
			d.rep.fail("%s's agent had to resync: a receiver did not hold what it had acknowledged", v.name)
		}
	}
	d.line("verified %d points of %d VMs byte for byte against their ground truth: %d differ, %d missing; latest equals every disk; %d agents resynced",
		checked, len(d.vms), differ, missing, resyncs)
	return nil
}

func (d *drill) tagged(v *vmRun, pts []*ferryv1.RecoveryPoint) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, p := range pts {
		if _, ok := v.truth[p.GetTag()]; ok {
			n++
		}
	}
	return n
}

func exportEquals(ctx context.Context, cc grpc.ClientConnInterface, vm, point, disk string, want blockdev.Device) (bool, error) {
	var got *blockdev.Memory
	if _, err := client.ExportDisk(ctx, cc, vm, point, disk, func(size int64) (blockdev.Device, error) {
		got = blockdev.NewMemory(size)
		return got, nil
	}); err != nil {
		return false, fmt.Errorf("export %s %s %s: %w", vm, point, disk, err)
	}
	return equal(ctx, got, want)
}

func equal(ctx context.Context, a, b blockdev.Device) (bool, error) {
	if a.Size() != b.Size() {
		return false, nil
	}
	x, y := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < a.Size(); off += int64(len(x)) {
		n := min(int64(len(x)), a.Size()-off)
		if _, err := a.ReadAt(ctx, x[:n], off); err != nil {
			return false, err
		}
		if _, err := b.ReadAt(ctx, y[:n], off); err != nil {
			return false, err
		}
		if !bytes.Equal(x[:n], y[:n]) {
			return false, nil
		}
	}
	return true, nil
}

// movedVM is a VM whose owner changed during the drill.
func (d *drill) movedVM(ctx context.Context, skip string) (*vmRun, string, error) {
	own, err := d.owners(ctx)
	if err != nil {
		return nil, "", err
	}
	for _, v := range d.vms {
		if v.name == skip || v.a == nil {
			continue
		}
		// The agent started at its first process server; a VM served
		// elsewhere now has moved.
		if i := slices.Index(d.vms, v); own[v.name] != d.ps[i%len(d.ps)].name {
			return v, own[v.name], nil
		}
	}
	return nil, "", errors.New("no VM changed owner")
}

// newestPoint is the VM's newest point with a ground truth.
func (d *drill) newestPoint(ctx context.Context, rc ferryv1.RecoveryClient, v *vmRun) (*ferryv1.RecoveryPoint, []*blockdev.Memory, error) {
	resp, err := rc.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: v.name})
	if err != nil {
		return nil, nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	pts := resp.GetPoints()
	for i := len(pts) - 1; i >= 0; i-- {
		if t, ok := v.truth[pts[i].GetTag()]; ok {
			return pts[i], t, nil
		}
	}
	return nil, nil, fmt.Errorf("%s has no point with a ground truth", v.name)
}

// failover runs a failover of v at its newest marked point and checks the
// disks the compute hook was given against the point's ground truth.
func (d *drill) failover(ctx context.Context, rc ferryv1.RecoveryClient, v *vmRun, typ ferryv1.FailoverType, network string) (*ferryv1.Job, error) {
	p, truth, err := d.newestPoint(ctx, rc, v)
	if err != nil {
		return nil, err
	}
	// The call returns when the job has ended.
	job, err := rc.Failover(ctx, &ferryv1.FailoverRequest{Vm: v.name, Type: typ, Point: fmt.Sprint(p.GetId()), Network: network})
	if err != nil {
		return nil, err
	}
	if job.GetOutcome() != "succeeded" {
		d.rep.fail("%s %s failover: %s: %s", v.name, typ, job.GetOutcome(), job.GetError())
		return job, nil
	}
	kind := "prod"
	if typ == ferryv1.FailoverType_FAILOVER_TYPE_TEST {
		kind = "test"
	}
	dirs, _ := filepath.Glob(filepath.Join(d.hookDir, v.name+"-"+kind+"-*"))
	if len(dirs) == 0 {
		d.rep.fail("%s: the compute hook made no %s machine", v.name, kind)
		return job, nil
	}
	sort.Strings(dirs)
	for i, m := range truth {
		f, err := blockdev.OpenFile(filepath.Join(dirs[len(dirs)-1], fmt.Sprintf("disk%d.img", i)), true)
		if err != nil {
			d.rep.fail("%s: disk%d of the %s machine: %v", v.name, i, kind, err)
			continue
		}
		same, err := equal(ctx, f, m)
		f.Close()
		if err != nil || !same {
			d.rep.fail("%s: disk%d of the %s machine differs from point %d's ground truth (%v)", v.name, i, kind, p.GetId(), err)
		}
	}
	return job, nil
}

func (d *drill) testFailover(ctx context.Context) error {
	v, owner, err := d.movedVM(ctx, "")
	if err != nil {
		return err
	}
	cc, done, err := d.follow()
	if err != nil {
		return err
	}
	defer done()
	rc := ferryv1.NewRecoveryClient(cc)
	job, err := d.failover(ctx, rc, v, ferryv1.FailoverType_FAILOVER_TYPE_TEST, "drill-isolated")
	if err != nil {
		return err
	}
	clean, err := rc.CleanupTest(ctx, &ferryv1.VMRequest{Vm: v.name})
	if err != nil {
		return err
	}
	if clean.GetOutcome() != "succeeded" {
		d.rep.fail("%s: test failover cleanup %s: %s", v.name, clean.GetOutcome(), clean.GetError())
	}
	d.line("test failover of %s (moved to %s) at point %d: %s in %v, disks equal to the point's ground truth; cleanup %s",
		v.name, owner, job.GetPoint().GetId(), job.GetOutcome(), jobTime(job), clean.GetOutcome())
	return nil
}

func (d *drill) unplanned(ctx context.Context) error {
	first, _, _ := d.movedVM(ctx, "")
	v, owner, err := d.movedVM(ctx, first.name)
	if err != nil {
		v, owner = first, ""
	}
	// The primary site is lost: the VM's agent is gone with it.
	v.a.Abort()
	cc, done, err := d.follow()
	if err != nil {
		return err
	}
	defer done()
	rc := ferryv1.NewRecoveryClient(cc)
	job, err := d.failover(ctx, rc, v, ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED, "")
	if err != nil {
		return err
	}
	v.a = nil
	d.line("unplanned failover of %s (moved to %s) at point %d: %s in %v, disks equal to the point's ground truth",
		v.name, owner, job.GetPoint().GetId(), job.GetOutcome(), jobTime(job))
	return nil
}

func jobTime(j *ferryv1.Job) time.Duration {
	return time.Duration(j.GetEndUnixNano() - j.GetStartUnixNano()).Round(time.Millisecond)
}

// storage reports what each process server keeps on its disk and what
// the bucket holds: with the hot window, the payloads of older records are
// in the bucket only.
func (d *drill) storage(ctx context.Context) error {
	// One more round of sealing after the last writes.
	time.Sleep(d.cfg.HotWindow + 2*time.Second)
	var parts []string
	var local, cold, segments, shipped float64
	for i, p := range d.ps {
		n, err := client.Metric(ctx, d.psAdmin[i], "ferry_ps_tier_segments_total")
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		b, err := client.Metric(ctx, d.psAdmin[i], "ferry_ps_tier_shipped_bytes_total")
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		segments, shipped = segments+n, shipped+b
		l, err := client.Metric(ctx, d.psAdmin[i], `ferry_ps_journal_payload_bytes{where="local"}`)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		c, err := client.Metric(ctx, d.psAdmin[i], `ferry_ps_journal_payload_bytes{where="cold"}`)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		local, cold = local+l, cold+c
		parts = append(parts, fmt.Sprintf("%s %s local / %s sealed", p.name, mib(int64(l)), mib(int64(c))))
	}
	d.sampling()
	d.peakMu.Lock()
	peak := d.peakLocal
	d.peakMu.Unlock()
	d.line("payloads at the end: %s; the most one process server held on its disk while the agents wrote: %s; bucket %s (segments, states; no base images: the drill is shorter than a retention window)",
		strings.Join(parts, ", "), mib(int64(peak)), mib(duOf(d.s3Dir)))
	var written int64
	var vmSeconds float64
	for _, v := range d.vms {
		v.mu.Lock()
		written += v.written
		vmSeconds += v.writing.Seconds()
		v.mu.Unlock()
	}
	d.line("shipping: %.0f segment puts for %s written (%.0f KB/s per VM on average): %.1f puts per VM-second, %.0f KiB per put (counted since each server last started)",
		segments, mib(written), float64(written)/vmSeconds/1000, segments/vmSeconds, shipped/max(segments, 1)/1024)
	if local >= cold {
		d.rep.fail("the process servers keep %s of payloads on their disks and only %s sealed: the hot window does not hold", mib(int64(local)), mib(int64(cold)))
	}
	return nil
}

// sample keeps the peak of the payload bytes a process server holds on
// its disk.
func (d *drill) sample(ctx context.Context) {
	for ctx.Err() == nil {
		for i, p := range d.ps {
			if !p.running() {
				continue
			}
			if l, err := client.Metric(ctx, d.psAdmin[i], `ferry_ps_journal_payload_bytes{where="local"}`); err == nil {
				d.peakMu.Lock()
				d.peakLocal = max(d.peakLocal, l)
				d.peakMu.Unlock()
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func duOf(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func (d *drill) teardown() {
	if d.sampling != nil {
		d.sampling()
	}
	for _, v := range d.vms {
		if v.a != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			v.a.Close(cctx)
			cancel()
		}
	}
	for _, p := range d.ps {
		p.stop()
	}
	if d.etcdc != nil {
		d.etcdc.Close()
	}
	for _, p := range d.etcd {
		p.stop()
	}
	if d.s3 != nil {
		d.s3.stop()
	}
}

// hookScript is the drill's compute hook: each machine is a directory
// holding a copy of the disks ferry-ps gave it, which the drill compares
// with the ground truth.
const hookScript = `#!/bin/sh
set -e
dir=${FERRY_HOOK_DIR:?}
action=$1
shift
case "$action" in
create)
	name=$1 net=$2 kind=$3
	shift 3
	id="$name-$kind-$(date +%s%N)"
	mkdir -p "$dir/$id"
	echo "$name" >"$dir/$id/name"
	for d in "$@"; do cp --sparse=always "${d#*=}" "$dir/$id/${d%%=*}.img"; done
	echo "$id"
	if [ "$kind" = test ]; then echo isolated=1; else echo public_ip=203.0.113.9; fi
	echo ports=22
	;;
start|stop|process) ;;
delete) rm -rf "${dir:?}/$1" ;;
console) echo "drill machine $1 booted" ;;
find)
	for n in "$dir"/*/name; do
		[ -e "$n" ] && [ "$(cat "$n")" = "$1" ] && basename "$(dirname "$n")"
	done
	true
	;;
*) echo "unknown action $action" >&2; exit 2 ;;
esac
`
