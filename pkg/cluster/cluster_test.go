package cluster

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/svctest"
)

func join(t *testing.T, e *svctest.Etcd, name string, ttl time.Duration) *Member {
	t.Helper()
	m, err := Join(context.Background(), Config{Endpoints: []string{e.Endpoint}, Name: name, Addr: name + ":7400", TTL: ttl,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestJoin: the lease is the TTL asked for, rounded up to whole seconds
// (10 s by default, at least 2 s), the keys are under /ferry, and a member
// without a logger works.
func TestJoin(t *testing.T) {
	e := svctest.StartEtcd(t)
	ctx := context.Background()
	if _, err := Join(ctx, Config{Endpoints: []string{e.Endpoint}, Name: "short", TTL: time.Second}); err == nil {
		t.Fatal("a 1 s lease was taken")
	}
	for _, c := range []struct {
		ttl  time.Duration
		want int64
	}{{0, 10}, {2 * time.Second, 2}, {2500 * time.Millisecond, 3}} {
		m, err := Join(ctx, Config{Endpoints: []string{e.Endpoint}, Name: "m", Addr: "m:7400", TTL: c.ttl})
		if err != nil {
			t.Fatal(err)
		}
		ttl, err := m.c.TimeToLive(ctx, m.session.Lease())
		if err != nil || ttl.GrantedTTL != c.want {
			t.Fatalf("ttl %v: lease of %d s (%v), want %d", c.ttl, ttl.GrantedTTL, err, c.want)
		}
		if o, err := m.Claim(ctx, "vm1"); err != nil || !o.Mine {
			t.Fatalf("claim: %+v %v", o, err)
		}
		for _, key := range []string{"/ferry/members/m", "/ferry/owners/vm1"} {
			if resp, err := m.c.Get(ctx, key); err != nil || len(resp.Kvs) != 1 {
				t.Fatalf("%s: %v %v", key, resp, err)
			}
		}
		// An owner whose member key is gone is still named, without an
		// address.
		m.c.Delete(ctx, "/ferry/members/m")
		if o, ok, err := m.Owner(ctx, "vm1"); err != nil || !ok || o.Member != "m" || o.Addr != "" {
			t.Fatalf("owner without its member key: %+v %v %v", o, ok, err)
		}
		if err := m.Leave(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOwnership against a real etcd: one owner per VM; the others are told
// who it is and where; a member that stops without leaving (its process
// killed: no more keepalives) loses its VMs when its lease expires, the
// others see them orphaned and exactly one claims each; a member that
// leaves frees its VMs at once; a name cannot join twice while registered.
func TestOwnership(t *testing.T) {
	e := svctest.StartEtcd(t)
	ctx := context.Background()
	const ttl = 2 * time.Second
	a, b, c := join(t, e, "ps-a", ttl), join(t, e, "ps-b", ttl), join(t, e, "ps-c", ttl)
	defer b.Leave(ctx)
	defer c.Leave(ctx)
	if _, err := Join(ctx, Config{Endpoints: []string{e.Endpoint}, Name: "ps-a", TTL: ttl}); err == nil {
		t.Fatal("a second ps-a joined")
	}
	ms, err := b.Members(ctx)
	if err != nil || len(ms) != 3 || ms["ps-a"] != "ps-a:7400" {
		t.Fatalf("members: %v %v", ms, err)
	}
	terms := map[string]uint64{}
	for _, vm := range []string{"web-1", "db-1", "app-1"} {
		o, err := a.Claim(ctx, vm)
		if err != nil || !o.Mine || o.Term == 0 {
			t.Fatalf("a claims %s: %+v %v", vm, o, err)
		}
		terms[vm] = o.Term
		// The owner's term, as the claim answered it, whoever asks.
		if o, err := b.Claim(ctx, vm); err != nil || o.Mine || o.Member != "ps-a" || o.Addr != "ps-a:7400" || o.Term != terms[vm] {
			t.Fatalf("b claims %s owned by a: %+v %v", vm, o, err)
		}
		if o, ok, err := b.Owner(ctx, vm); err != nil || !ok || o.Term != terms[vm] {
			t.Fatalf("owner of %s: %+v %v", vm, o, err)
		}
		if o, err := a.Claim(ctx, vm); err != nil || !o.Mine || o.Term != terms[vm] {
			t.Fatalf("a claims its own %s again: %+v %v", vm, o, err)
		}
	}
	if err := b.Release(ctx, "web-1"); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("b releases a's VM: %v", err)
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	orphansB, orphansC := b.Orphans(wctx), c.Orphans(wctx)
	// a stops without leaving: its client goes, its lease is not revoked.
	killed := time.Now()
	a.c.Close()
	claimed := map[string]string{}
	for len(claimed) < 3 {
		var vm string
		var m *Member
		select {
		case vm = <-orphansB:
			m = b
		case vm = <-orphansC:
			m = c
		case <-time.After(4 * ttl):
			t.Fatalf("a's VMs not orphaned within %v: %v", 4*ttl, claimed)
		}
		o, err := m.Claim(ctx, vm)
		if err != nil {
			t.Fatal(err)
		}
		if prev, ok := claimed[vm]; ok && prev != o.Member {
			t.Fatalf("%s claimed by %s and %s", vm, prev, o.Member)
		}
		claimed[vm] = o.Member
	}
	took := time.Since(killed)
	if took < ttl-time.Second || took > 3*ttl {
		t.Fatalf("a's VMs taken over %v after it stopped (lease %v)", took, ttl)
	}
	t.Logf("a's 3 VMs owned by others %v after it stopped (lease %v): %v", took.Round(time.Millisecond), ttl, claimed)
	for vm, who := range claimed {
		for _, m := range []*Member{b, c} {
			o, ok, err := m.Owner(ctx, vm)
			if err != nil || !ok || o.Member != who || o.Mine != (m.cfg.Name == who) {
				t.Fatalf("owner of %s seen by %s: %+v %v %v", vm, m.cfg.Name, o, ok, err)
			}
		}
	}
	select {
	case <-a.Done():
	case <-time.After(2 * ttl):
		t.Fatal("a was not told it lost its membership")
	}
	if _, err := a.Claim(ctx, "new-1"); !errors.Is(err, ErrLost) {
		t.Fatalf("a claims after losing its lease: %v", err)
	}
	if ms, _ := b.Members(ctx); len(ms) != 2 {
		t.Fatalf("members after a stopped: %v", ms)
	}

	// A member that leaves frees its VMs at once; one that releases a VM
	// frees that one.
	var cs []string
	for vm, who := range claimed {
		if who == "ps-c" {
			cs = append(cs, vm)
		}
	}
	d := join(t, e, "ps-d", ttl)
	defer d.Leave(ctx)
	if len(cs) > 0 {
		if err := c.Release(ctx, cs[0]); err != nil {
			t.Fatal(err)
		}
		if o, err := d.Claim(ctx, cs[0]); err != nil || !o.Mine {
			t.Fatalf("d claims a released VM: %+v %v", o, err)
		}
	}
	if err := b.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	for vm, who := range claimed {
		if who != "ps-b" {
			continue
		}
		if o, err := d.Claim(ctx, vm); err != nil || !o.Mine || o.Term <= terms[vm] {
			t.Fatalf("d claims %s of b, which left: %+v %v (a's term %d: each claim's is newer)", vm, o, err, terms[vm])
		}
	}
}

// TestOrphansEndWithTheLease: etcd goes away; once the member's lease is
// gone (Done), its watch for orphans ends too, so that the member can
// join again instead of waiting on a watch of a lease it lost.
func TestOrphansEndWithTheLease(t *testing.T) {
	e := svctest.StartEtcd(t)
	m := join(t, e, "ps-a", 2*time.Second)
	ctx := context.Background()
	orphans := m.Orphans(ctx)
	e.Kill()
	select {
	case <-m.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the lease outlived etcd by 20 s")
	}
	select {
	case _, open := <-orphans:
		if open {
			t.Fatal("an orphan reported with etcd down")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watch for orphans went on after the lease was lost")
	}
	if err := m.Live(); !errors.Is(err, ErrLost) {
		t.Fatalf("live after the lease was lost: %v", err)
	}
	if _, err := m.Claim(ctx, "vm1"); !errors.Is(err, ErrLost) {
		t.Fatalf("claim after the lease was lost: %v", err)
	}
}
