package processserver_test

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/internal/agenttest"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/objstore"
	"github.com/ferrydr/ferry/pkg/tier"
	"github.com/ferrydr/ferry/pkg/wire"
	"github.com/ferrydr/ferry/processserver"
	"github.com/ferrydr/ferry/processserver/client"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

func openBucket(t *testing.T, srv *ferrytest.S3, bucket string) *objstore.Store {
	t.Helper()
	cfg := objstore.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: bucket, Prefix: "site-b",
		Key: bytes.Repeat([]byte{5}, 32)}
	if err := objstore.CreateBucket(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	st, err := objstore.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// clusterPS starts a process server of a cluster and waits until it is a
// member.
func clusterPS(t *testing.T, name string, e *ferrytest.Etcd, st *objstore.Store) *ferrytest.PS {
	t.Helper()
	ps := ferrytest.StartPS(t, func(c *processserver.Config) {
		c.Store = st
		c.Cluster = processserver.ClusterConfig{Endpoints: []string{e.Endpoint}, Name: name, TTL: 2 * time.Second}
		c.ProcessInterval = 100 * time.Millisecond
	})
	select {
	case <-ps.Joined():
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not join the cluster", name)
	}
	return ps
}

func owns(ps *ferrytest.PS, vm string) bool {
	return ps.Server != nil && slices.Contains(ps.Cluster().Owned, ferry.VMID(vm))
}

// work writes and marks on each VM, then waits until everything is
// acknowledged.
func work(vms []*agenttest.VM, rounds int) {
	// Marks inside the initial copy's drain cut no point: it ends first.
	for _, v := range vms {
		v.Sync()
	}
	for range rounds {
		for _, v := range vms {
			for range 4 {
				v.Write()
			}
			v.Mark()
		}
	}
	for _, v := range vms {
		v.Sync()
	}
}

// TestClusterTakeover: two process servers share etcd and a bucket; the
// agents of two VMs start at the first, which claims them. A call to the
// other about them is answered with the owner's address, and ferryctl's
// client follows it. The owner stops: the other takes both VMs over from
// the bucket, the agents find it, and every point from before and after
// the takeover equals its ground truth byte for byte. The first, started
// again, drops its stale copies and sends callers to the new owner.
func TestClusterTakeover(t *testing.T) {
	e := ferrytest.StartEtcd(t)
	srv := ferrytest.StartS3(t)
	st := openBucket(t, srv, "cluster")
	a := clusterPS(t, "ps-a", e, st)
	b := clusterPS(t, "ps-b", e, st)
	var vms []*agenttest.VM
	for seed := uint64(71); seed <= 72; seed++ {
		vms = append(vms, agenttest.New(t, a.Addr, seed, []int64{2 << 20, 1 << 20}, func(c *agent.Config) {
			c.Targets = []string{b.Addr}
		}))
	}
	work(vms, 5)
	for _, v := range vms {
		if !owns(a, v.Name) || owns(b, v.Name) {
			t.Fatalf("%s: owned by a %v, b %v; want a alone", v.Name, owns(a, v.Name), owns(b, v.Name))
		}
	}

	// b is asked about a's VM: it names the owner, and the client follows.
	var md metadata.MD
	plain := ferryv1.NewRecoveryClient(ferrytest.Dial(t, b.Addr))
	_, err := plain.ListPoints(context.Background(), &ferryv1.ListPointsRequest{Vm: vms[0].Name}, grpc.Trailer(&md))
	if status.Code(err) != codes.Unavailable || !slices.Equal(md.Get(wire.OwnerTrailer), []string{a.Addr}) {
		t.Fatalf("b about a's VM: %v, trailer %v; want Unavailable naming %s", err, md, a.Addr)
	}
	if err := a.ProcessAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	follow := dialFollowing(t, b.Addr)
	for _, v := range vms {
		if n := v.VerifyPoints(nil, follow); n != 5 {
			t.Fatalf("%s: %d points checked through b, want 5", v.Name, n)
		}
	}

	// a stops; b takes its VMs over from the bucket.
	stopped := time.Now()
	a.Stop()
	ferrytest.WaitFor(t, 30*time.Second, "b owns both VMs", func() bool { return owns(b, vms[0].Name) && owns(b, vms[1].Name) })
	t.Logf("both VMs owned by b %v after a stopped", time.Since(stopped).Round(time.Millisecond))
	work(vms, 4)
	cc := ferrytest.Dial(t, b.Addr)
	for _, v := range vms {
		if n := v.VerifyPoints(b.ProcessAll, cc); n != 9 {
			t.Fatalf("%s: %d points checked at b after the takeover, want 9", v.Name, n)
		}
		v.VerifyLatest(cc)
	}
	evs, err := b.Events(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	took := 0
	for _, ev := range evs {
		if ev.Kind == processserver.EventTakeover {
			took++
		}
	}
	if took != 2 {
		t.Fatalf("%d takeover events at b, want 2: %+v", took, evs)
	}

	// a again: it drops its copies (b owns them) and sends callers there.
	a.Start()
	select {
	case <-a.Joined():
	case <-time.After(20 * time.Second):
		t.Fatal("a did not join again")
	}
	if got, err := a.Journal().VMs(context.Background()); err != nil || len(got) != 0 {
		t.Fatalf("a kept %d VMs it no longer owns (%v)", len(got), err)
	}
	if err := b.ProcessAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		if n := v.VerifyPoints(nil, dialFollowing(t, a.Addr)); n != 9 {
			t.Fatalf("%s: %d points through a, want 9", v.Name, n)
		}
	}
}

func dialFollowing(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20))}
	owners := client.NewOwners(opts...)
	t.Cleanup(owners.Close)
	cc, err := grpc.NewClient(addr, append(opts, grpc.WithChainUnaryInterceptor(owners.Unary), grpc.WithChainStreamInterceptor(owners.Stream))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestObjectStoreOutage: while the S3 server is down nothing more is
// acknowledged (the agent keeps what it wrote), the events say so; when
// it is back the records are shipped, acknowledged, and a second process
// server rebuilds every point from the bucket alone.
func TestObjectStoreOutage(t *testing.T) {
	srv := ferrytest.StartS3(t)
	st := openBucket(t, srv, "outage")
	ps := ferrytest.StartPS(t, func(c *processserver.Config) {
		c.Store, c.StoreTimeout = st, time.Second
		c.ProcessInterval = 100 * time.Millisecond
	})
	v := agenttest.New(t, ps.Addr, 81, []int64{2 << 20}, nil)
	work([]*agenttest.VM{v}, 3)
	acked := v.A.Stats().Acked

	srv.Kill()
	for range 3 {
		for range 4 {
			v.Write()
		}
		v.Mark()
	}
	time.Sleep(3 * time.Second)
	if got := v.A.Stats().Acked; got != acked {
		t.Fatalf("acknowledged up to %d with the object store down, was %d", got, acked)
	}
	srv.Start()
	v.Sync()
	kinds := map[string]bool{}
	evs, _ := ps.Events(context.Background(), "")
	for _, ev := range evs {
		kinds[ev.Kind] = true
	}
	if !kinds[processserver.EventNotDurable] || !kinds[processserver.EventDurableAgain] {
		t.Fatalf("events %+v: want the object store's outage and return", evs)
	}
	if n := v.VerifyPoints(ps.ProcessAll, ferrytest.Dial(t, ps.Addr)); n != len(v.Truth) || n < 4 {
		t.Fatalf("%d points checked, %d marks queued", n, len(v.Truth))
	}
	want, err := ps.Journal().Points(context.Background(), ferry.VMID(v.Name))
	if err != nil {
		t.Fatal(err)
	}
	ferrytest.WaitFor(t, 10*time.Second, "the VM's state in the bucket", func() bool {
		got, err := tier.New(tier.Config{Store: st}).GetState(context.Background(), ferry.VMID(v.Name))
		return err == nil && len(got.Points) == len(want)
	})

	// Another process server, from the bucket alone.
	other := ferrytest.StartPS(t, func(c *processserver.Config) { c.Store = st })
	if n := v.VerifyPoints(nil, ferrytest.Dial(t, other.Addr)); n != len(v.Truth) {
		t.Fatalf("%d points rebuilt from the bucket, want %d", n, len(v.Truth))
	}
}

// TestHotWindow: with a hot window of a second, the records older than it
// are sealed into the bucket and their payloads leave the journal file;
// every point, the sealed ones read back through the bucket, still equals
// its ground truth, and the journal's checks (which read every payload)
// pass.
func TestHotWindow(t *testing.T) {
	srv := ferrytest.StartS3(t)
	st := openBucket(t, srv, "hot")
	ps := ferrytest.StartPS(t, func(c *processserver.Config) {
		c.Store, c.HotWindow, c.CacheBytes = st, time.Second, 1<<20
		c.ProcessInterval = 100 * time.Millisecond
	})
	v := agenttest.New(t, ps.Addr, 91, []int64{2 << 20, 1 << 20}, nil)
	for range 4 {
		work([]*agenttest.VM{v}, 3)
		time.Sleep(500 * time.Millisecond)
	}
	ctx := context.Background()
	ferrytest.WaitFor(t, 20*time.Second, "records sealed into the bucket", func() bool {
		got, err := ps.Journal().VM(ctx, ferry.VMID(v.Name))
		return err == nil && got.ColdSeq > 0 && got.ColdBytes > 0
	})
	got, _ := ps.Journal().VM(ctx, ferry.VMID(v.Name))
	pts, _ := ps.Journal().Points(ctx, ferry.VMID(v.Name))
	cold := 0
	for _, p := range pts {
		if p.ID <= got.ColdSeq {
			cold++
		}
	}
	if cold < 3 {
		t.Fatalf("%d points before the seal at %d: want several", cold, got.ColdSeq)
	}
	if n := v.VerifyPoints(ps.ProcessAll, ferrytest.Dial(t, ps.Addr)); n != len(v.Truth) {
		t.Fatalf("%d points checked, %d marks queued", n, len(v.Truth))
	}
	v.VerifyLatest(ferrytest.Dial(t, ps.Addr))
	t.Logf("sealed up to %d: %d of %d stored bytes in the bucket only, %d points before it", got.ColdSeq, got.ColdBytes, got.StoredBytes, cold)
}

// TestEtcdOutage: etcd goes away for longer than the lease: the process
// server loses its membership (an event says so), ends its agents'
// streams without stopping them, joins again when etcd is back and claims
// its VMs again; the agents write on throughout, and every point equals
// its ground truth.
func TestEtcdOutage(t *testing.T) {
	e := ferrytest.StartEtcd(t)
	srv := ferrytest.StartS3(t)
	st := openBucket(t, srv, "etcd-outage")
	ps := clusterPS(t, "ps-a", e, st)
	v := agenttest.New(t, ps.Addr, 95, []int64{2 << 20}, nil)
	work([]*agenttest.VM{v}, 3)
	e.Kill()
	for range 3 {
		for range 4 {
			v.Write()
		}
		v.Mark()
		time.Sleep(time.Second)
	}
	ferrytest.WaitFor(t, 20*time.Second, "the membership lost", func() bool { return !ps.Cluster().Member })
	e.Start()
	ferrytest.WaitFor(t, 60*time.Second, "the VM owned again", func() bool { return owns(ps, v.Name) })
	work([]*agenttest.VM{v}, 2)
	if err := v.A.Err(); err != nil {
		t.Fatalf("the agent stopped: %v", err)
	}
	evs, _ := ps.Events(context.Background(), "")
	lost := 0
	for _, ev := range evs {
		if ev.Kind == processserver.EventMembershipLost {
			lost++
		}
	}
	if lost == 0 {
		t.Fatalf("no %s event: %+v", processserver.EventMembershipLost, evs)
	}
	if n := v.VerifyPoints(ps.ProcessAll, ferrytest.Dial(t, ps.Addr)); n != len(v.Truth) || n < 5 {
		t.Fatalf("%d points checked, %d marks queued", n, len(v.Truth))
	}
}
