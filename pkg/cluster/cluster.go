// Package cluster shares the protected VMs among several process servers
// through etcd. Each process server is a member with a lease that it
// keeps alive; each VM is owned by at most one member at a time, by a key
// written under that member's lease. A member that stops (or is cut off
// from etcd) loses its lease after its TTL, etcd deletes its keys with
// it, and the other members, watching, claim its VMs. Nothing here is a
// consensus protocol of Ferry's own: etcd's leases and transactions decide.
//
// Keys, under Config.Prefix:
//
//	members/NAME  the member's address (under its lease)
//	owners/VM     the owning member's name (under its lease)
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

// Errors of the cluster.
var (
	// ErrLost: the member's lease expired or was revoked: it owns nothing
	// any more and must stop serving the VMs it held.
	ErrLost = errors.New("cluster membership lost")
	// ErrNotOwner: the VM is owned by another member, or by none.
	ErrNotOwner = errors.New("not the VM's owner")
)

// DefaultTTL is a member's lease: how long its VMs stay its own after it
// was last heard of.
const DefaultTTL = 10 * time.Second

// Config configures a Member.
type Config struct {
	// Endpoints are etcd's client addresses (host:port).
	Endpoints []string
	// Prefix of Ferry's keys (default /ferry).
	Prefix string
	// Name is the member's name, unique in the cluster; Addr where agents
	// and ferryctl reach it.
	Name, Addr string
	// TTL is the member's lease (default DefaultTTL; at least 2 s).
	TTL    time.Duration
	Logger *slog.Logger
}

// Member is a process server's place in the cluster. It is safe for
// concurrent use.
type Member struct {
	leave   sync.Once
	left    error
	cfg     Config
	c       *clientv3.Client
	session *concurrency.Session
	log     *slog.Logger
}

// Owner is who owns a VM.
type Owner struct {
	Member, Addr string
	// Mine: the asking member.
	Mine bool
	// Term is the etcd revision at which the owner claimed the VM: it
	// grows with every claim, so that what an owner wrote can be told
	// from what an earlier owner of the VM wrote.
	Term uint64
}

// Join connects to etcd, takes a lease and registers the member under it.
// A member of the same name that is still registered is refused. The lease
// is kept alive until ctx ends or Leave: pass the server's lifetime, not a
// request's.
func Join(ctx context.Context, cfg Config) (*Member, error) {
	if len(cfg.Endpoints) == 0 || cfg.Name == "" || strings.Contains(cfg.Name, "/") {
		return nil, errors.New("cluster: endpoints and a name without '/' are required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/ferry"
	}
	cfg.Prefix = strings.TrimSuffix(cfg.Prefix, "/")
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < 2*time.Second {
		return nil, fmt.Errorf("cluster: ttl %v is below 2s", cfg.TTL)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	// The client's own logging is dropped: what matters is returned as an
	// error and logged by the member.
	c, err := clientv3.New(clientv3.Config{Endpoints: cfg.Endpoints, DialTimeout: 5 * time.Second, Context: context.WithoutCancel(ctx),
		Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("cluster: etcd %v: %w", cfg.Endpoints, err)
	}
	s, err := concurrency.NewSession(c, concurrency.WithTTL(int((cfg.TTL+time.Second-1)/time.Second)), concurrency.WithContext(ctx))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("cluster: lease: %w", err)
	}
	m := &Member{cfg: cfg, c: c, session: s, log: cfg.Logger}
	key := m.key("members", cfg.Name)
	resp, err := c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, cfg.Addr, clientv3.WithLease(s.Lease()))).Commit()
	if err == nil && !resp.Succeeded {
		err = fmt.Errorf("a member named %s is registered (another process server, or this one before its lease expired)", cfg.Name)
	}
	if err != nil {
		s.Close()
		c.Close()
		return nil, fmt.Errorf("cluster: join: %w", err)
	}
	return m, nil
}

func (m *Member) key(kind, name string) string { return m.cfg.Prefix + "/" + kind + "/" + name }

// Done is closed when the membership is lost (ErrLost).
func (m *Member) Done() <-chan struct{} { return m.session.Done() }

// Live returns ErrLost once the membership is lost.
func (m *Member) Live() error {
	select {
	case <-m.session.Done():
		return ErrLost
	default:
		return nil
	}
}

// Claim makes the member the VM's owner unless another member owns it,
// and says who owns it.
func (m *Member) Claim(ctx context.Context, vm string) (Owner, error) {
	if err := m.Live(); err != nil {
		return Owner{}, err
	}
	key := m.key("owners", vm)
	resp, err := m.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, m.cfg.Name, clientv3.WithLease(m.session.Lease()))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return Owner{}, fmt.Errorf("cluster: claim %s: %w", vm, err)
	}
	if resp.Succeeded {
		m.log.Info("vm claimed", "vm", vm, "member", m.cfg.Name)
		return Owner{Member: m.cfg.Name, Addr: m.cfg.Addr, Mine: true, Term: uint64(resp.Header.Revision)}, nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return m.Claim(ctx, vm) // released between the compare and the get
	}
	return m.owner(ctx, string(kvs[0].Value), kvs[0].CreateRevision)
}

// owner describes the member name.
func (m *Member) owner(ctx context.Context, name string, term int64) (Owner, error) {
	o := Owner{Member: name, Mine: name == m.cfg.Name, Term: uint64(term)}
	resp, err := m.c.Get(ctx, m.key("members", name))
	if err != nil {
		return Owner{}, fmt.Errorf("cluster: member %s: %w", name, err)
	}
	if len(resp.Kvs) > 0 {
		o.Addr = string(resp.Kvs[0].Value)
	}
	return o, nil
}

// Owner says who owns the VM; false when no member does.
func (m *Member) Owner(ctx context.Context, vm string) (Owner, bool, error) {
	resp, err := m.c.Get(ctx, m.key("owners", vm))
	if err != nil {
		return Owner{}, false, fmt.Errorf("cluster: owner of %s: %w", vm, err)
	}
	if len(resp.Kvs) == 0 {
		return Owner{}, false, nil
	}
	o, err := m.owner(ctx, string(resp.Kvs[0].Value), resp.Kvs[0].CreateRevision)
	return o, err == nil, err
}

// Release gives up a VM the member owns (ErrNotOwner otherwise).
func (m *Member) Release(ctx context.Context, vm string) error {
	key := m.key("owners", vm)
	resp, err := m.c.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", m.cfg.Name)).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("cluster: release %s: %w", vm, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("cluster: release %s: %w", vm, ErrNotOwner)
	}
	return nil
}

// Members returns every registered member's name and address.
func (m *Member) Members(ctx context.Context) (map[string]string, error) {
	resp, err := m.c.Get(ctx, m.key("members", ""), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("cluster: members: %w", err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), m.key("members", ""))] = string(kv.Value)
	}
	return out, nil
}

// Orphans sends each VM whose owner let go of it (released, or its lease
// expired) as it happens, until ctx ends or the membership is lost (the
// channel is closed then); the members race to Claim it and etcd picks
// one.
func (m *Member) Orphans(ctx context.Context) <-chan string {
	out := make(chan string, 64)
	prefix := m.key("owners", "")
	go func() {
		defer close(out)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		// A watch waits out an unreachable etcd; a member whose lease is
		// gone stops watching at once.
		go func() {
			select {
			case <-m.session.Done():
				cancel()
			case <-wctx.Done():
			}
		}()
		for wr := range m.c.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithFilterPut()) {
			if wr.Err() != nil {
				m.log.Warn("cluster watch", "err", wr.Err())
				return
			}
			for _, ev := range wr.Events {
				select {
				case out <- strings.TrimPrefix(string(ev.Kv.Key), prefix):
				case <-ctx.Done():
					return
				case <-m.session.Done():
					return
				}
			}
		}
	}()
	return out
}

// Leave revokes the lease: the member's VMs are free at once. Calling it
// again does nothing.
func (m *Member) Leave(ctx context.Context) error {
	m.leave.Do(func() { m.left = errors.Join(m.session.Close(), m.c.Close()) })
	return m.left
}
