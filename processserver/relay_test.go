package processserver

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/mastertarget"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/retention"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// relaySite is a process server relaying to a master target, both over
// TLS with the deployment's CA, and a VM "web" reprotected to it.
type relaySite struct {
	ps    *Server
	mt    *mastertarget.Server
	mtReg *prometheus.Registry
	ca    *tlsca.CA
	dir   string
}

func startRelaySite(t *testing.T) *relaySite {
	t.Helper()
	ctx := context.Background()
	r := &relaySite{dir: t.TempDir()}
	caDir := filepath.Join(r.dir, "ca")
	var err error
	if r.ca, err = tlsca.Init(caDir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if err := r.ca.IssueTo(filepath.Join(r.dir, "mt"), tlsca.Identity{Role: tlsca.RoleMasterTarget, Name: "mt"}, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	mtTLS, err := tlsca.Config(filepath.Join(r.dir, "mt"), false)
	if err != nil {
		t.Fatal(err)
	}
	r.mtReg = prometheus.NewRegistry()
	r.mt, err = mastertarget.New(mastertarget.Config{DataDir: filepath.Join(r.dir, "mtdata"), Listen: "127.0.0.1:0", TLS: mtTLS,
		Primary:         &mastertarget.FilePrimary{Disks: map[string]string{}, AlternateDir: filepath.Join(r.dir, "alt")},
		ProcessInterval: -1, Logger: quiet(), Registerer: r.mtReg, Gatherer: r.mtReg})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.mt.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.mt.Close(context.Background()) })
	psTLS, err := tlsca.Config(filepath.Join(caDir, "ps"), false)
	if err != nil {
		t.Fatal(err)
	}
	r.ps, err = New(Config{DataDir: filepath.Join(r.dir, "ps"), Listen: "127.0.0.1:0", TLS: psTLS, MasterTarget: r.mt.Addr(), MasterTargetTLS: psTLS,
		Logger: quiet(), ProcessInterval: -1, GroupSchedule: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.ps.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.ps.Close(context.Background()) })
	// web was failed over (epoch 2) and reprotected to an alternate
	// location at the primary site.
	disks := []ferry.Disk{{Name: "os", Size: 1 << 20}}
	if err := r.ps.j.CreateVM(ctx, journal.VM{Name: "web", Disks: disks, Epoch: 2, BlockSize: 4096}); err != nil {
		t.Fatal(err)
	}
	if err := r.ps.ctl.update("web", func(st *VMState) { st.State, st.Location = StateReprotected, "alternate" }); err != nil {
		t.Fatal(err)
	}
	if _, err := r.mt.PrepareReprotect(ctx, mastertarget.Reprotect{VM: "web", Disks: disks, Epoch: 2, Location: ferry.LocationAlternate}); err != nil {
		t.Fatal(err)
	}
	return r
}

// agent opens a replication stream to the process server with the
// certificate of an agent of vm.
func (r *relaySite) agent(t *testing.T, vm string) ferryv1.Replication_ReplicateClient {
	t.Helper()
	return r.agentTo(t, vm, r.ps.Addr())
}

// agentTo opens a replication stream to addr with an agent's certificate.
func (r *relaySite) agentTo(t *testing.T, vm, addr string) ferryv1.Replication_ReplicateClient {
	t.Helper()
	dir := filepath.Join(r.dir, "agent-"+vm)
	if err := r.ca.IssueTo(dir, tlsca.Identity{Role: tlsca.RoleAgent, Name: vm}, nil); err != nil && !strings.Contains(err.Error(), "exist") {
		t.Fatal(err)
	}
	cfg, err := tlsca.Config(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	st, err := ferryv1.NewReplicationClient(cc).Replicate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func relayHello(vm string) *ferryv1.AgentMessage { return helloAt(vm, 2) }

func helloAt(vm string, epoch uint64) *ferryv1.AgentMessage {
	return &ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Hello{Hello: &ferryv1.Hello{Vm: vm, Epoch: epoch, BlockSize: 4096,
		Disks: []*ferryv1.DiskInfo{{Name: "os", SizeBytes: 1 << 20}}, AgentInstance: "test"}}}
}

func relayBatch(seq uint64, data []byte, sum uint64) *ferryv1.AgentMessage {
	rec := &ferryv1.Record{Seq: seq, Body: &ferryv1.Record_Write{Write: &ferryv1.Write{Disk: 0, Offset: 0, Length: uint32(len(data)), Data: data, Xxhash: sum}}}
	rec.Check = wire.RecordCheck(rec)
	return &ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Batch{Batch: &ferryv1.Batch{Records: []*ferryv1.Record{rec}}}}
}

// TestRelayOverTLS: a recovered VM's agent replicates through the
// process server to the master target over TLS: the master target answers
// its hello with the failback policy and acknowledges its writes, which
// it received from the process server's certificate.
func TestRelayOverTLS(t *testing.T) {
	r := startRelaySite(t)
	st := r.agent(t, "web")
	if err := st.Send(relayHello("web")); err != nil {
		t.Fatal(err)
	}
	m, err := st.Recv()
	if err != nil || m.GetHelloAck() == nil {
		t.Fatalf("hello through the relay: %v %v", m, err)
	}
	if p := m.GetHelloAck().GetPolicy(); p.GetName() != retention.FailbackName {
		t.Fatalf("the relayed hello was answered with policy %v", p)
	}
	data := []byte(strings.Repeat("relayed ", 512))
	if err := st.Send(relayBatch(1, data, xxhash.Sum64(data))); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if m.GetAck().GetDurableSeq() == 1 {
			break
		}
	}
	rs, err := r.mt.ReprotectStatus(context.Background(), "web")
	if err != nil || rs.ReceivedBytes != int64(len(data)) || rs.DurableSeq != 1 {
		t.Fatalf("the master target got %d bytes up to %d (%v)", rs.ReceivedBytes, rs.DurableSeq, err)
	}
}

// TestHostileRelay: the relay checks the agent's certificate against the
// VM it names, and a batch whose data does not match its xxhash ends the
// stream with DATA_LOSS before anything of it reaches the master target.
func TestHostileRelay(t *testing.T) {
	r := startRelaySite(t)
	other := r.agent(t, "db")
	if err := other.Send(relayHello("web")); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("db's agent relaying web: %v", err)
	}
	st := r.agent(t, "web")
	if err := st.Send(relayHello("web")); err != nil {
		t.Fatal(err)
	}
	if m, err := st.Recv(); err != nil || m.GetHelloAck() == nil {
		t.Fatalf("hello: %v %v", m, err)
	}
	data := []byte(strings.Repeat("x", 4096))
	if err := st.Send(relayBatch(1, data, xxhash.Sum64(data)+1)); err != nil {
		t.Fatal(err)
	}
	var err error
	for err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.DataLoss {
		t.Fatalf("a batch with a wrong xxhash through the relay: %v", err)
	}
	rs, _ := r.mt.ReprotectStatus(context.Background(), "web")
	if rs.ReceivedBytes != 0 || rs.DurableSeq != 0 {
		t.Fatalf("the master target stored %d bytes of a damaged batch", rs.ReceivedBytes)
	}
	// The relay refused it: the master target never saw the batch.
	mfs, err := r.mtReg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ferry_mt_rejected_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetCounter().GetValue() != 0 {
				t.Fatalf("the damaged batch reached the master target: %v", mf.GetMetric())
			}
		}
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestHostileEpochTakeover: an agent of another direction of a
// reprotected VM (the primary's, started ahead with the next epoch; an old
// one) cannot take the VM's stream over, at the relay or at the master
// target: it is refused and the recovered VM's relayed stream goes on.
func TestHostileEpochTakeover(t *testing.T) {
	r := startRelaySite(t)
	st := r.agent(t, "web")
	if err := st.Send(relayHello("web")); err != nil {
		t.Fatal(err)
	}
	if m, err := st.Recv(); err != nil || m.GetHelloAck() == nil {
		t.Fatalf("hello: %v %v", m, err)
	}
	for _, c := range []struct {
		name  string
		addr  string
		epoch uint64
		code  codes.Code
	}{
		{"the primary's agent, ahead, at the process server", r.ps.Addr(), 3, codes.Unavailable},
		{"an old agent at the process server", r.ps.Addr(), 1, codes.FailedPrecondition},
		{"the primary's agent, ahead, at the master target", r.mt.Addr(), 3, codes.Unavailable},
		{"an old agent at the master target", r.mt.Addr(), 1, codes.FailedPrecondition},
	} {
		other := r.agentTo(t, "web", c.addr)
		if err := other.Send(helloAt("web", c.epoch)); err != nil {
			t.Fatal(err)
		}
		if _, err := other.Recv(); status.Code(err) != c.code {
			t.Fatalf("%s: %v, want %v", c.name, err, c.code)
		}
	}
	data := []byte(strings.Repeat("still here ", 400))[:4096]
	if err := st.Send(relayBatch(1, data, xxhash.Sum64(data))); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := st.Recv()
		if err != nil {
			t.Fatalf("the recovered VM's relayed stream after the attempts: %v", err)
		}
		if m.GetAck().GetDurableSeq() == 1 {
			break
		}
	}
}
