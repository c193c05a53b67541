package tier

import (
	"container/list"
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/journal"
)

// The tier is the journal's cold store (journal.Cold): the payloads of
// records older than the process server's hot window are dropped from its
// journal file (journal.SealPayloads) and read from their segments in the
// bucket, through a cache of decoded segments bounded in bytes.

// DefaultCacheBytes bounds the cache of segments read back when
// Config.CacheBytes is not set.
const DefaultCacheBytes = 256 << 20

// SealTarget is the size sealing merges the small segments of group
// commits into by default: one object per this many bytes of a VM's older
// records.
const SealTarget = 64 << 20

type cache struct {
	mu    sync.Mutex
	max   int64
	size  int64
	lru   *list.List // of *cachedSeg, most recent first
	byKey map[string]*list.Element
	// hits and misses count Payload calls answered from the cache or
	// from the bucket.
	hits, misses int64
}

type cachedSeg struct {
	name  string
	first ferry.Seq
	recs  []journal.Record
	size  int64
}

func newCache(max int64) *cache {
	if max <= 0 {
		max = DefaultCacheBytes
	}
	return &cache{max: max, lru: list.New(), byKey: map[string]*list.Element{}}
}

func (c *cache) get(name string) *cachedSeg {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.byKey[name]
	if e == nil {
		c.misses++
		return nil
	}
	c.hits++
	c.lru.MoveToFront(e)
	return e.Value.(*cachedSeg)
}

func (c *cache) put(s *cachedSeg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.byKey[s.name]; e != nil {
		c.lru.MoveToFront(e)
		return
	}
	c.byKey[s.name] = c.lru.PushFront(s)
	c.size += s.size
	// The newest stays even when it alone is above the bound: a read
	// needs it.
	for c.size > c.max && c.lru.Len() > 1 {
		e := c.lru.Back()
		old := e.Value.(*cachedSeg)
		c.lru.Remove(e)
		delete(c.byKey, old.name)
		c.size -= old.size
	}
}

// CacheStats says what the cache of segments holds and how it answered.
type CacheStats struct {
	Bytes, Max   int64
	Segments     int
	Hits, Misses int64
}

// CacheStats returns the cache's state.
func (t *Tier) CacheStats() CacheStats {
	c := t.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStats{Bytes: c.size, Max: c.max, Segments: c.lru.Len(), Hits: c.hits, Misses: c.misses}
}

// Payload is journal.Cold's: the payload of vm's record seq, from the
// segment of the bucket's chain that holds it.
func (t *Tier) Payload(ctx context.Context, vm ferry.VMID, seq ferry.Seq) ([]byte, error) {
	seg, err := t.locate(ctx, vm, seq)
	if err != nil {
		return nil, err
	}
	cs := t.cache.get(seg.name)
	if cs == nil {
		recs, size, err := t.read(ctx, vm, seg)
		if err != nil {
			return nil, err
		}
		cs = &cachedSeg{name: seg.name, first: seg.first, recs: recs, size: size}
		t.cache.put(cs)
	}
	r := &cs.recs[seq-cs.first]
	if r.Seq != seq || r.Kind != journal.KindWrite {
		return nil, fmt.Errorf("%s: record %d is not the write the journal has", seg.name, seq)
	}
	return r.Payload, nil
}

// chainFromBase is the chain of segments after the bucket's newest base
// (from the first record when it has none).
func (t *Tier) chainFromBase(ctx context.Context, vm ferry.VMID) ([]segment, error) {
	m, err := t.latestBase(ctx, vm)
	if err != nil {
		return nil, err
	}
	return t.chain(ctx, vm, m.Seq)
}

// locate finds the segment of the chain that holds seq, reading the
// chain again when what the tier knows does not cover it.
func (t *Tier) locate(ctx context.Context, vm ferry.VMID, seq ferry.Seq) (segment, error) {
	find := func(segs []segment) (segment, bool) {
		i := sort.Search(len(segs), func(i int) bool { return segs[i].last >= seq })
		if i < len(segs) && segs[i].first <= seq {
			return segs[i], true
		}
		return segment{}, false
	}
	t.mu.Lock()
	segs := t.index[vm]
	t.mu.Unlock()
	if s, ok := find(segs); ok {
		return s, nil
	}
	segs, err := t.chainFromBase(ctx, vm)
	if err != nil {
		return segment{}, err
	}
	t.mu.Lock()
	t.index[vm] = segs
	t.mu.Unlock()
	if s, ok := find(segs); ok {
		return s, nil
	}
	return segment{}, fmt.Errorf("tier: vm %s: no segment in the bucket holds record %d", vm, seq)
}

// SealStats says what Seal did.
type SealStats struct {
	// Merged segments into Into new ones.
	Merged, Into int
	// Deleted: segments no chain follows any more (an earlier owner's,
	// superseded).
	Deleted int
	journal.SealStats
}

// Seal makes the bucket hold the VM's records up to upTo in few large
// segments (the small ones of single group commits merged, up to
// Config.SealBytes each) and drops their payloads from the journal's file:
// reads of them go to the bucket from then on. upTo must be shipped and
// processed. term is the owner's.
func (t *Tier) Seal(ctx context.Context, j *journal.Journal, term uint64, vm ferry.VMID, upTo ferry.Seq) (SealStats, error) {
	var st SealStats
	v := t.vm(vm)
	v.mu.Lock()
	defer v.mu.Unlock()
	end, err := t.end(ctx, vm, v)
	if err != nil {
		return st, err
	}
	if upTo > end {
		return st, fmt.Errorf("tier: vm %s: seal to %d: the bucket holds records up to %d only", vm, upTo, end)
	}
	objs, err := t.st.ListObjects(ctx, segPrefix(vm))
	if err != nil {
		return st, err
	}
	size := map[string]int64{}
	names := make([]string, len(objs))
	for i, o := range objs {
		size[o.Name] = o.Size
		names[i] = o.Name
	}
	base, err := t.latestBase(ctx, vm)
	if err != nil {
		return st, err
	}
	segs := t.chainOf(vm, names, base.Seq)
	inChain := map[string]bool{}
	var group []segment
	var groupSize int64
	flush := func() error {
		defer func() { group, groupSize = group[:0], 0 }()
		if len(group) < 2 {
			return nil
		}
		if err := t.merge(ctx, vm, term, group); err != nil {
			return err
		}
		st.Merged += len(group)
		st.Into++
		return nil
	}
	for _, s := range segs {
		inChain[s.name] = true
		if s.last > upTo {
			break
		}
		// A segment sealing made (or a large group commit's) stays as it
		// is: merging it again would only rewrite it.
		big := size[s.name] >= t.sealBytes/8
		if big || groupSize+size[s.name] > t.sealBytes {
			if err := flush(); err != nil {
				return st, err
			}
		}
		if big {
			continue
		}
		group = append(group, s)
		groupSize += size[s.name]
	}
	if err := flush(); err != nil {
		return st, err
	}
	// Segments no chain follows (an earlier owner's, superseded) are
	// deleted once the chain is sealed past them.
	for _, o := range objs {
		s, ok := parseSeg(vm, o.Name)
		if !ok || inChain[o.Name] || s.last > upTo {
			continue
		}
		if err := t.st.Delete(ctx, o.Name); err != nil {
			return st, err
		}
		st.Deleted++
	}
	t.mu.Lock()
	delete(t.index, vm)
	t.mu.Unlock()
	js, err := j.SealPayloads(ctx, vm, upTo)
	st.SealStats = js
	return st, err
}

// merge puts the records of consecutive segments as one, then deletes
// them: the chain follows the merged one (the owner's term, and the
// longest of a term) from the moment it is there.
func (t *Tier) merge(ctx context.Context, vm ferry.VMID, term uint64, group []segment) error {
	var recs []journal.Record
	for _, s := range group {
		rs, _, err := t.read(ctx, vm, s)
		if err != nil {
			return err
		}
		recs = append(recs, rs...)
	}
	first, last := group[0].first, group[len(group)-1].last
	name := segName(vm, first, last, term)
	pctx, cancel := context.WithTimeout(ctx, 4*t.timeout)
	err := t.st.Put(pctx, name, EncodeSegment(nil, recs))
	cancel()
	if err != nil {
		return err
	}
	for _, s := range group {
		if s.name == name {
			continue
		}
		if err := t.st.Delete(ctx, s.name); err != nil {
			return err
		}
	}
	return nil
}
