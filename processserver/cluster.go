package processserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/cluster"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/tier"
	"github.com/ferrydr/ferry/pkg/wire"
)

// ClusterConfig makes a process server one of several that share the
// site's VMs through etcd: each VM is served by its owner, and a dead
// owner's VMs are taken over by the others from the object store.
type ClusterConfig struct {
	// Endpoints are etcd's client addresses; none: no cluster.
	Endpoints []string
	// Name is the process server's name in the cluster (unique; default
	// the host name).
	Name string
	// Advertise is the address agents and ferryctl are sent to for the
	// VMs this process server owns (default the gRPC listener's).
	Advertise string
	// TTL is how long the VMs stay this server's after it was last heard
	// of by etcd (default cluster.DefaultTTL).
	TTL time.Duration
	// Prefix of Ferry's keys in etcd (default /ferry).
	Prefix string
}

// Event kinds of the cluster.
const (
	EventTakeover       = "vm-taken-over"
	EventMembershipLost = "cluster-membership-lost"
	EventJoined         = "cluster-joined"
	EventNotDurable     = "object-store-unavailable"
	EventDurableAgain   = "object-store-available"
)

// clusterState is what a process server knows of its place in the
// cluster: its membership and the VMs it owns, with the term of each
// claim.
type clusterState struct {
	cfg ClusterConfig

	mu     sync.Mutex
	member *cluster.Member // nil: not (or no longer) a member
	owned  map[ferry.VMID]uint64

	claimMu sync.Mutex // one claim and restore at a time
	joined  chan struct{}
}

// soloTerm is the term of a process server that ships without a cluster:
// it is every VM's only owner.
const soloTerm = 1

// openTier prepares shipping to the object store, when configured, and
// brings the journal and the bucket to agree: without a cluster every VM
// of either is this server's, and each is restored (kept when the
// journal's copy is whole).
func (s *Server) openTier(ctx context.Context) error {
	if s.cfg.Store == nil {
		return nil
	}
	var err error
	if len(s.cfg.Cluster.Endpoints) > 0 {
		if s.cfg.Cluster.Name == "" {
			if s.cfg.Cluster.Name, err = os.Hostname(); err != nil {
				return fmt.Errorf("cluster: name: %w", err)
			}
		}
		s.clu = &clusterState{cfg: s.cfg.Cluster, owned: map[ferry.VMID]uint64{}, joined: make(chan struct{})}
		return nil
	}
	names, err := s.tier.VMs(ctx)
	if err != nil {
		return fmt.Errorf("object store: %w", err)
	}
	local, err := s.j.VMs(ctx)
	if err != nil {
		return err
	}
	for _, vm := range local {
		if !slices.Contains(names, vm.Name) {
			names = append(names, vm.Name)
		}
	}
	for _, vm := range names {
		rs, err := s.tier.Restore(ctx, s.j, vm, serverBases{s})
		if err != nil {
			return fmt.Errorf("object store: restore %s: %w", vm, err)
		}
		if !rs.Kept && rs.End > 0 {
			s.log.Info("vm restored from the object store", "vm", vm, "end", rs.End, "segments", rs.Segments, "points", rs.Points)
		}
	}
	return nil
}

// DefaultHotWindow is how much of each VM's newest history keeps its
// payloads on the process server's disk when it ships to an object store.
const DefaultHotWindow = time.Hour

// newTier makes the object store tier, when there is a store.
func (s *Server) newTier() {
	if s.cfg.Store == nil {
		return
	}
	if s.cfg.HotWindow == 0 {
		s.cfg.HotWindow = DefaultHotWindow
	}
	s.tier = tier.New(tier.Config{Store: s.cfg.Store, Logger: s.log.With("component", "tier"), Registerer: s.cfg.Registerer,
		PutTimeout: s.cfg.StoreTimeout, CacheBytes: s.cfg.CacheBytes})
}

// sealAll seals, for every VM this server owns, the records older than
// the hot window that the bucket holds and that were processed: their
// payloads leave the journal file for the bucket's large segments. The
// boundary is the newest point older than the window.
func (s *Server) sealAll(ctx context.Context) {
	vms, err := s.j.VMs(ctx)
	if err != nil {
		return
	}
	edge := s.clock.Now().Add(-s.cfg.HotWindow)
	for _, vm := range vms {
		term, ok := s.termOf(vm.Name)
		if !ok {
			continue
		}
		pts, err := s.j.Points(ctx, vm.Name)
		if err != nil {
			continue
		}
		var upTo ferry.Seq
		for _, p := range pts {
			if !p.Time.After(edge) {
				upTo = p.ID
			}
		}
		end, err := s.tier.End(ctx, vm.Name)
		if err != nil {
			continue
		}
		upTo = min(upTo, vm.ProcessedSeq, end)
		if upTo <= vm.ColdSeq {
			continue
		}
		st, err := s.tier.Seal(ctx, s.j, term, vm.Name, upTo)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("sealing records older than the hot window into the object store", "vm", vm.Name, "up_to", upTo, "err", err)
			}
			continue
		}
		s.log.Debug("sealed into the object store", "vm", vm.Name, "up_to", upTo, "records", st.Records, "bytes", st.Bytes,
			"merged", st.Merged, "into", st.Into, "deleted", st.Deleted)
	}
}

// shipBase puts the VM's base images into the bucket once retention has
// folded records into them, at most once a hot window, so that the bucket
// can let go of the segments before them (retention in the bucket).
func (s *Server) shipBase(ctx context.Context, vm ferry.VMID) error {
	if s.tier == nil {
		return nil
	}
	if _, ok := s.termOf(vm); !ok {
		return nil
	}
	s.healthMu.Lock()
	last := s.baseShipped[vm]
	s.healthMu.Unlock()
	if !last.IsZero() && s.clock.Now().Sub(last) < s.cfg.HotWindow {
		return nil
	}
	st, err := s.tier.ShipBase(ctx, s.j, vm)
	if err != nil {
		return fmt.Errorf("vm %s: base images to the object store: %w", vm, err)
	}
	if st.Seq == 0 {
		return nil
	}
	s.healthMu.Lock()
	s.baseShipped[vm] = s.clock.Now()
	s.healthMu.Unlock()
	s.log.Info("base images in the object store", "vm", vm, "seq", st.Seq, "bytes", st.Bytes, "objects_deleted", st.Deleted)
	return nil
}

// sealEvery is how often sealAll runs: a quarter of the hot window,
// between a second and a minute.
func (s *Server) sealEvery() time.Duration {
	return min(max(s.cfg.HotWindow/4, time.Second), time.Minute)
}

// termOf is the term this server ships vm's records under; false when it
// does not own vm.
func (s *Server) termOf(vm ferry.VMID) (uint64, bool) {
	if s.clu == nil {
		return soloTerm, true
	}
	c := s.clu
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.member == nil || c.member.Live() != nil {
		return 0, false
	}
	t, ok := c.owned[vm]
	return t, ok
}

// shipHook is the ingest's Ship: each group commit goes to the bucket
// under the owner's term before anything of it is acknowledged; a server
// that no longer owns a VM acknowledges nothing more of it.
func (s *Server) shipHook() func(ctx context.Context, recs []journal.Record) error {
	if s.tier == nil {
		return nil
	}
	return func(ctx context.Context, recs []journal.Record) error {
		for _, r := range recs {
			if _, ok := s.termOf(r.VM); !ok {
				return fmt.Errorf("vm %s: %w", r.VM, errNotOwner)
			}
		}
		err := s.tier.Ship(ctx, s.j, func(vm ferry.VMID) uint64 { t, _ := s.termOf(vm); return t }, recs)
		s.storeAvailable(err)
		return err
	}
}

var errNotOwner = errors.New("this process server no longer owns the VM")

// storeAvailable records an event when the object store stops or starts
// taking segments again.
func (s *Server) storeAvailable(err error) {
	s.healthMu.Lock()
	was := s.storeDown
	s.storeDown = err != nil
	s.healthMu.Unlock()
	switch {
	case err != nil && !was:
		s.log.Error("object store unavailable: replication pauses (nothing is acknowledged that is not in the bucket)", "err", err)
		s.event(Event{Time: s.clock.Now(), Kind: EventNotDurable, Detail: "the object store did not take a segment: replication pauses until it does: " + err.Error()})
	case err == nil && was:
		s.log.Info("object store available again: replication resumes")
		s.event(Event{Time: s.clock.Now(), Kind: EventDurableAgain, Detail: "the object store takes segments again: replication resumes"})
	}
}

// shipOnHello runs before an agent is told its VM's durable sequence:
// what the journal holds beyond the bucket is shipped first (so that the
// agent never skips records the bucket lacks), and the VM's state with it.
func (s *Server) shipOnHello(ctx context.Context, vm ferry.VMID) error {
	if s.tier == nil {
		return nil
	}
	term, ok := s.termOf(vm)
	if !ok {
		return fmt.Errorf("vm %s: %w", vm, errNotOwner)
	}
	err := s.tier.CatchUp(ctx, s.j, term, vm)
	if err == nil {
		err = s.shipState(ctx, vm, term)
	}
	s.storeAvailable(err)
	if err != nil {
		return fmt.Errorf("%w: %w", ingest.ErrNotDurable, err)
	}
	return nil
}

func (s *Server) shipState(ctx context.Context, vm ferry.VMID, term uint64) error {
	st, err := tier.StateOf(ctx, s.j, vm, term)
	if err != nil {
		return err
	}
	return s.tier.PutState(ctx, st)
}

// shipStates ships the state of every VM this server owns whose points,
// description, seal or base changed since it was last shipped.
func (s *Server) shipStates(ctx context.Context) {
	vms, err := s.j.VMs(ctx)
	if err != nil {
		return
	}
	for _, vm := range vms {
		term, ok := s.termOf(vm.Name)
		if !ok {
			continue
		}
		mark := fmt.Sprintf("%d/%d/%d/%d/%d/%d/%d", vm.Epoch, vm.ProcessedSeq, vm.Points, vm.LatestPoint.UnixNano(), vm.ColdSeq, vm.BaseSeq, term)
		s.healthMu.Lock()
		same := s.shippedState[vm.Name] == mark
		s.healthMu.Unlock()
		if same {
			continue
		}
		if err := s.shipState(ctx, vm.Name, term); err != nil {
			if ctx.Err() == nil {
				s.log.Warn("shipping a VM's state to the object store", "vm", vm.Name, "err", err)
			}
			continue
		}
		s.healthMu.Lock()
		s.shippedState[vm.Name] = mark
		s.healthMu.Unlock()
	}
}

// admitOwner lets an agent's stream in only at its VM's owner: the VM is
// claimed (and restored from the bucket) when nobody owns it, and an
// agent of a VM another server owns is refused with that server's
// address in the OwnerTrailer.
func (s *Server) admitOwner(ctx context.Context, vm ferry.VMID) error {
	if s.clu == nil {
		return nil
	}
	o, err := s.own(ctx, vm)
	if err != nil {
		return fmt.Errorf("%w: %w", ingest.ErrNotDurable, err)
	}
	if !o.Mine {
		grpc.SetTrailer(ctx, metadata.Pairs(wire.OwnerTrailer, o.Addr))
		return fmt.Errorf("vm %s: %w: %s at %s", vm, ingest.ErrElsewhere, o.Member, o.Addr)
	}
	return nil
}

// errNoMember: the server is not (yet, or any more) a member of the
// cluster, and serves no VM.
var errNoMember = errors.New("not a member of the cluster (joining etcd)")

// own makes this server vm's owner unless another is, and says which is.
// A VM it claims is first made in the journal what the bucket holds.
func (s *Server) own(ctx context.Context, vm ferry.VMID) (cluster.Owner, error) {
	c := s.clu
	c.mu.Lock()
	m := c.member
	term, ok := c.owned[vm]
	c.mu.Unlock()
	if m == nil || m.Live() != nil {
		return cluster.Owner{}, errNoMember
	}
	if ok {
		return cluster.Owner{Member: c.cfg.Name, Mine: true, Term: term}, nil
	}
	c.claimMu.Lock()
	defer c.claimMu.Unlock()
	return s.claim(ctx, m, vm)
}

// claim claims vm (claimMu held) and restores it when it becomes this
// server's.
func (s *Server) claim(ctx context.Context, m *cluster.Member, vm ferry.VMID) (cluster.Owner, error) {
	c := s.clu
	c.mu.Lock()
	term, ok := c.owned[vm]
	c.mu.Unlock()
	if ok {
		return cluster.Owner{Member: c.cfg.Name, Mine: true, Term: term}, nil
	}
	o, err := m.Claim(ctx, string(vm))
	if err != nil || !o.Mine {
		return o, err
	}
	start := time.Now()
	// The restore outlives the call that asked for it (not the server):
	// an agent that stops waiting for its hello's answer (its
	// AnswerTimeout) finds the VM restored when it asks again, instead of
	// a restore begun anew.
	rctx, stop := context.WithCancel(s.bg)
	defer stop()
	rs, err := s.tier.Restore(rctx, s.j, vm, serverBases{s})
	if err != nil {
		// Another server may do better: the VM is let go.
		if rerr := m.Release(context.WithoutCancel(ctx), string(vm)); rerr != nil {
			s.log.Warn("releasing a VM that could not be restored", "vm", vm, "err", rerr)
		}
		return cluster.Owner{}, fmt.Errorf("restore %s from the object store: %w", vm, err)
	}
	c.mu.Lock()
	c.owned[vm] = o.Term
	c.mu.Unlock()
	if !rs.Kept && rs.End > 0 {
		d := time.Since(start)
		s.log.Info("vm taken over from the object store", "vm", vm, "end", rs.End, "segments", rs.Segments, "bytes", rs.Bytes, "points", rs.Points, "took", d)
		s.event(Event{Time: s.clock.Now(), VM: string(vm), Kind: EventTakeover,
			Detail: fmt.Sprintf("%s took the VM over: its journal rebuilt from the object store up to record %d (%d segments, %d points) in %v", c.cfg.Name, rs.End, rs.Segments, rs.Points, d.Round(time.Millisecond))})
	}
	return o, nil
}

// joinCluster starts the membership loop: join, claim what this server
// held, take over what others let go, and join again after the
// membership was lost.
func (s *Server) joinCluster() {
	if s.clu == nil {
		return
	}
	if s.clu.cfg.Advertise == "" {
		s.clu.cfg.Advertise = s.Addr()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.clusterLoop(s.bg)
	}()
}

// Joined is closed once the server is first a member of its cluster
// (never without a cluster).
func (s *Server) Joined() <-chan struct{} {
	if s.clu == nil {
		return nil
	}
	return s.clu.joined
}

func (s *Server) clusterLoop(ctx context.Context) {
	c := s.clu
	var once sync.Once
	for ctx.Err() == nil {
		m, err := cluster.Join(ctx, cluster.Config{Endpoints: c.cfg.Endpoints, Prefix: c.cfg.Prefix, Name: c.cfg.Name,
			Addr: c.cfg.Advertise, TTL: c.cfg.TTL, Logger: s.log.With("component", "cluster")})
		if err != nil {
			s.log.Warn("joining the cluster (etcd); trying again", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		c.mu.Lock()
		c.member = m
		c.mu.Unlock()
		s.log.Info("joined the cluster", "name", c.cfg.Name, "advertise", c.cfg.Advertise)
		s.event(Event{Time: s.clock.Now(), Kind: EventJoined, Detail: fmt.Sprintf("%s joined the cluster at %s", c.cfg.Name, c.cfg.Advertise)})
		s.reconcileLocal(ctx, m)
		once.Do(func() { close(c.joined) })
		s.takeOver(ctx, m)
		// The membership is lost (or the server closes): nothing is
		// owned any more, and the streams of what was are ended.
		c.mu.Lock()
		lost := c.owned
		c.owned, c.member = map[ferry.VMID]uint64{}, nil
		c.mu.Unlock()
		if ctx.Err() != nil {
			m.Leave(context.Background())
			return
		}
		s.log.Error("cluster membership lost: this server's VMs are the others' now", "vms", len(lost))
		s.event(Event{Time: s.clock.Now(), Kind: EventMembershipLost,
			Detail: fmt.Sprintf("%s lost its etcd lease: its %d VMs are taken over by the other process servers; it joins again", c.cfg.Name, len(lost))})
		for vm := range lost {
			s.tier.Forget(vm)
			// The agent reconnects, and is sent to the new owner.
			fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			s.recv.Disconnect(fctx, vm)
			cancel()
		}
		m.Leave(context.Background())
	}
}

// reconcileLocal claims the VMs the journal holds that nobody owns (a
// restart), and drops the copies of those another server owns now.
func (s *Server) reconcileLocal(ctx context.Context, m *cluster.Member) {
	vms, err := s.j.VMs(ctx)
	if err != nil {
		return
	}
	for _, vm := range vms {
		s.clu.claimMu.Lock()
		o, err := s.claim(ctx, m, vm.Name)
		s.clu.claimMu.Unlock()
		switch {
		case err != nil:
			s.log.Warn("claiming a VM of the journal", "vm", vm.Name, "err", err)
		case !o.Mine:
			s.log.Info("dropping the journal's copy of a VM another process server owns", "vm", vm.Name, "owner", o.Member)
			s.tier.Forget(vm.Name)
			if err := errors.Join(s.j.DeleteVM(ctx, vm.Name), serverBases{s}.Drop(vm.Name)); err != nil {
				s.log.Warn("dropping a VM's copy", "vm", vm.Name, "err", err)
			}
		}
	}
}

// takeOver claims the VMs other servers let go of, until the membership
// is lost or ctx ends. A watch that ends (etcd unreachable for a while) is
// started again; every VM the bucket holds that nobody owns is claimed
// each time, for what happened while nobody watched.
func (s *Server) takeOver(ctx context.Context, m *cluster.Member) {
	for {
		wctx, cancel := context.WithCancel(ctx)
		orphans := m.Orphans(wctx)
		s.claimUnowned(ctx, m)
		for vm := range orphans {
			s.clu.claimMu.Lock()
			_, err := s.claim(ctx, m, ferry.VMID(vm))
			s.clu.claimMu.Unlock()
			if err != nil && ctx.Err() == nil {
				s.log.Warn("taking a VM over", "vm", vm, "err", err)
			}
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-m.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// claimUnowned claims every VM of the bucket that has no owner.
func (s *Server) claimUnowned(ctx context.Context, m *cluster.Member) {
	names, err := s.tier.VMs(ctx)
	if err != nil {
		s.log.Warn("listing the object store's VMs", "err", err)
		return
	}
	for _, vm := range names {
		if _, owned, err := m.Owner(ctx, string(vm)); err != nil || owned {
			continue
		}
		s.clu.claimMu.Lock()
		_, err := s.claim(ctx, m, vm)
		s.clu.claimMu.Unlock()
		if err != nil && ctx.Err() == nil {
			s.log.Warn("taking a VM over", "vm", vm, "err", err)
		}
	}
}

// ownerUnary sends an operator's call about a VM to the VM's owner: a
// server that does not own it answers Unavailable with the owner's
// address in the OwnerTrailer, which ferryctl follows. A VM nobody owns
// is claimed by the server asked.
func (s *Server) ownerUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if s.clu == nil || !strings.HasPrefix(info.FullMethod, "/ferry.v1.Recovery/") {
		return handler(ctx, req)
	}
	r, ok := req.(interface{ GetVm() string })
	if !ok || r.GetVm() == "" {
		return handler(ctx, req)
	}
	o, err := s.own(ctx, ferry.VMID(r.GetVm()))
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "vm %s: %v", r.GetVm(), err)
	}
	if !o.Mine {
		grpc.SetTrailer(ctx, metadata.Pairs(wire.OwnerTrailer, o.Addr))
		return nil, status.Errorf(codes.Unavailable, "vm %s is served by %s at %s", r.GetVm(), o.Member, o.Addr)
	}
	return handler(ctx, req)
}

// ownerStream is ownerUnary for the recovery API's streams (a point's
// export): the first request names the VM.
func (s *Server) ownerStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if s.clu == nil || !strings.HasPrefix(info.FullMethod, "/ferry.v1.Recovery/") {
		return handler(srv, ss)
	}
	return handler(srv, &ownerCheckedStream{ServerStream: ss, s: s})
}

type ownerCheckedStream struct {
	grpc.ServerStream
	s       *Server
	checked bool
}

func (o *ownerCheckedStream) RecvMsg(m any) error {
	if err := o.ServerStream.RecvMsg(m); err != nil || o.checked {
		return err
	}
	o.checked = true
	r, ok := m.(interface{ GetVm() string })
	if !ok || r.GetVm() == "" {
		return nil
	}
	own, err := o.s.own(o.Context(), ferry.VMID(r.GetVm()))
	if err != nil {
		return status.Errorf(codes.Unavailable, "vm %s: %v", r.GetVm(), err)
	}
	if !own.Mine {
		o.SetTrailer(metadata.Pairs(wire.OwnerTrailer, own.Addr))
		return status.Errorf(codes.Unavailable, "vm %s is served by %s at %s", r.GetVm(), own.Member, own.Addr)
	}
	return nil
}

// ClusterStatus is what a process server of a cluster says of itself.
type ClusterStatus struct {
	Name, Advertise string
	Member          bool
	Owned           []ferry.VMID
}

// Cluster says whether the server is a member and which VMs it owns; the
// zero value without a cluster.
func (s *Server) Cluster() ClusterStatus {
	if s.clu == nil {
		return ClusterStatus{}
	}
	c := s.clu
	c.mu.Lock()
	defer c.mu.Unlock()
	st := ClusterStatus{Name: c.cfg.Name, Advertise: c.cfg.Advertise, Member: c.member != nil && c.member.Live() == nil}
	for vm := range c.owned {
		st.Owned = append(st.Owned, vm)
	}
	return st
}
