// Package tier keeps every VM's journal where a process server that takes
// the VM over will find it: in an S3-compatible bucket (pkg/objstore),
// besides the process server's own journal file.
//
// Each group commit of the journal is shipped as one segment object per
// VM before the agent's records are acknowledged (the process server's
// ingest calls Ship between the journal's fsync and the acknowledgement),
// so what an agent was told is durable is in the bucket too. The VM's
// description and its recovery points are shipped as a state object after
// they change. Restore rebuilds a VM's journal in another process
// server's journal file from the bucket alone: its records through the
// journal's own Append (every rule and checksum applies again), processed
// again, then its points as they were.
//
// Objects, under the store's prefix:
//
//	vms/VM/state                  the VM and its points (JSON)
//	vms/VM/seg/FIRST-LAST-TERM    records FIRST..LAST (hex, 16 digits)
//
// TERM is the owner's term (the etcd revision of its claim on the VM,
// which grows with each claim): where two owners both wrote segments from
// the same sequence (a process server cut off from etcd that went on
// writing for a moment while another took its VMs over), the chain takes
// the newer owner's.
package tier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/objstore"
)

// Config configures a Tier.
type Config struct {
	Store  *objstore.Store
	Logger *slog.Logger
	// Registerer receives the tier's metrics (ferry_ps_tier_*); none when
	// nil.
	Registerer prometheus.Registerer
	// PutTimeout bounds one put (default 10 s): a store that does not
	// answer fails the shipment, which the process server reports, instead
	// of holding every acknowledgement silently.
	PutTimeout time.Duration
	// CacheBytes bounds the segments kept decoded for reads of payloads
	// sealed away (default DefaultCacheBytes).
	CacheBytes int64
	// SealBytes is the size sealing merges small segments into (default
	// SealTarget); a segment of an eighth of it or more is left as it is.
	SealBytes int64
}

// DefaultPutTimeout bounds a put when Config.PutTimeout is not set.
const DefaultPutTimeout = 10 * time.Second

// Tier ships VMs' records and states to the bucket and restores them. It
// is safe for concurrent use; calls for one VM are serialized.
type Tier struct {
	st      *objstore.Store
	log     *slog.Logger
	m       metrics
	timeout time.Duration

	cache     *cache
	sealBytes int64

	mu    sync.Mutex
	vms   map[ferry.VMID]*shipped
	index map[ferry.VMID][]segment // each VM's chain, as Payload last read it
}

// shipped is what the bucket holds of one VM, as far as this process
// server knows.
type shipped struct {
	mu    sync.Mutex
	known bool      // seq was read from the bucket or set by this tier
	seq   ferry.Seq // the chain in the bucket ends here
}

type metrics struct {
	putSeconds prometheus.Histogram
	bytes      prometheus.Counter
	segments   prometheus.Counter
	errors     prometheus.Counter
}

// New returns a tier over cfg.Store.
func New(cfg Config) *Tier {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m := metrics{
		putSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_ps_tier_put_seconds",
			Help: "Time to put one segment object into the bucket (the part of an acknowledgement's latency the bucket adds).", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_ps_tier_shipped_bytes_total",
			Help: "Bytes of segments shipped to the bucket (before the object store's framing)."}),
		segments: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_ps_tier_segments_total",
			Help: "Segment objects shipped to the bucket."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_ps_tier_errors_total",
			Help: "Failed puts to the bucket: the records they held were not acknowledged."}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(m.putSeconds, m.bytes, m.segments, m.errors)
	}
	if cfg.PutTimeout <= 0 {
		cfg.PutTimeout = DefaultPutTimeout
	}
	if cfg.SealBytes <= 0 {
		cfg.SealBytes = SealTarget
	}
	return &Tier{st: cfg.Store, log: cfg.Logger, m: m, timeout: cfg.PutTimeout, cache: newCache(cfg.CacheBytes), sealBytes: cfg.SealBytes,
		vms: map[ferry.VMID]*shipped{}, index: map[ferry.VMID][]segment{}}
}

func (t *Tier) vm(name ferry.VMID) *shipped {
	t.mu.Lock()
	defer t.mu.Unlock()
	v := t.vms[name]
	if v == nil {
		v = &shipped{}
		t.vms[name] = v
	}
	return v
}

// Forget drops what the tier knows of a VM: another process server owns
// it now, and the bucket is read again if it comes back.
func (t *Tier) Forget(name ferry.VMID) {
	t.mu.Lock()
	delete(t.vms, name)
	delete(t.index, name)
	t.mu.Unlock()
}

func stateName(vm ferry.VMID) string { return "vms/" + string(vm) + "/state" }
func segPrefix(vm ferry.VMID) string { return "vms/" + string(vm) + "/seg/" }

func segName(vm ferry.VMID, first, last ferry.Seq, term uint64) string {
	return fmt.Sprintf("%s%016x-%016x-%016x", segPrefix(vm), uint64(first), uint64(last), term)
}

// segment is one segment object's name, parsed.
type segment struct {
	name        string
	first, last ferry.Seq
	term        uint64
}

// read fetches segment s of vm and decodes it; it must hold exactly the
// records its name says. It also returns the object's size.
func (t *Tier) read(ctx context.Context, vm ferry.VMID, s segment) ([]journal.Record, int64, error) {
	b, err := t.st.Get(ctx, s.name)
	if err != nil {
		return nil, 0, err
	}
	recs, err := DecodeSegment(vm, b)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", s.name, err)
	}
	if len(recs) == 0 || recs[0].Seq != s.first || recs[len(recs)-1].Seq != s.last {
		return nil, 0, fmt.Errorf("%s: %w: its records are not the ones its name says", s.name, ErrSegment)
	}
	return recs, int64(len(b)), nil
}

func parseSeg(vm ferry.VMID, name string) (segment, bool) {
	parts := strings.Split(strings.TrimPrefix(name, segPrefix(vm)), "-")
	if len(parts) != 3 {
		return segment{}, false
	}
	var v [3]uint64
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 16, 64)
		if err != nil || len(p) != 16 {
			return segment{}, false
		}
		v[i] = n
	}
	if v[0] == 0 || v[1] < v[0] {
		return segment{}, false
	}
	return segment{name: name, first: ferry.Seq(v[0]), last: ferry.Seq(v[1]), term: v[2]}, true
}

// chain returns the segments that continue the VM's stream after from,
// in order: at each sequence the newest owner's segment, and of one
// owner's the longest.
func (t *Tier) chain(ctx context.Context, vm ferry.VMID, from ferry.Seq) ([]segment, error) {
	names, err := t.st.List(ctx, segPrefix(vm))
	if err != nil {
		return nil, err
	}
	return t.chainOf(vm, names, from), nil
}

// chainOf is chain over the segment names listed already.
func (t *Tier) chainOf(vm ferry.VMID, names []string, from ferry.Seq) []segment {
	byFirst := map[ferry.Seq]segment{}
	for _, n := range names {
		s, ok := parseSeg(vm, n)
		if !ok {
			t.log.Warn("tier: an object that is not a segment among the segments", "vm", vm, "object", n)
			continue
		}
		if b, ok := byFirst[s.first]; !ok || s.term > b.term || (s.term == b.term && s.last > b.last) {
			byFirst[s.first] = s
		}
	}
	var out []segment
	for next := from + 1; ; {
		s, ok := byFirst[next]
		if !ok && len(out) == 0 && from > 0 {
			// A base falls inside a segment (sealing merged across it):
			// the chain starts in the one that holds from+1.
			s, ok = straddling(byFirst, next)
		}
		if !ok {
			return out
		}
		out = append(out, s)
		next = s.last + 1
	}
}

// straddling is the segment that holds seq without starting at it: of
// the newest term, and of a term the longest.
func straddling(byFirst map[ferry.Seq]segment, seq ferry.Seq) (segment, bool) {
	var best segment
	found := false
	for _, s := range byFirst {
		if s.first < seq && s.last >= seq && (!found || s.term > best.term || (s.term == best.term && s.last > best.last)) {
			best, found = s, true
		}
	}
	return best, found
}

// End is the last sequence of the VM's stream in the bucket (0 when the
// bucket holds none of it).
func (t *Tier) End(ctx context.Context, vm ferry.VMID) (ferry.Seq, error) {
	v := t.vm(vm)
	v.mu.Lock()
	defer v.mu.Unlock()
	return t.end(ctx, vm, v)
}

func (t *Tier) end(ctx context.Context, vm ferry.VMID, v *shipped) (ferry.Seq, error) {
	if v.known {
		return v.seq, nil
	}
	m, err := t.latestBase(ctx, vm)
	if err != nil {
		return 0, err
	}
	segs, err := t.chain(ctx, vm, m.Seq)
	if err != nil {
		return 0, err
	}
	v.seq, v.known = m.Seq, true
	if len(segs) > 0 {
		v.seq = segs[len(segs)-1].last
	}
	return v.seq, nil
}

// Ship puts the records of one group commit into the bucket, one segment
// per VM (in parallel), and returns once every one is there. Records of a
// VM must continue what the bucket holds of it: when they do not (an
// earlier put failed after the journal had them), j's records fill the
// gap first. term gives the owner's term of each VM.
func (t *Tier) Ship(ctx context.Context, j *journal.Journal, term func(ferry.VMID) uint64, recs []journal.Record) error {
	byVM := map[ferry.VMID][]journal.Record{}
	var order []ferry.VMID
	for _, r := range recs {
		if _, ok := byVM[r.VM]; !ok {
			order = append(order, r.VM)
		}
		byVM[r.VM] = append(byVM[r.VM], r)
	}
	errs := make([]error, len(order))
	var wg sync.WaitGroup
	for i, vm := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = t.shipVM(ctx, j, term(vm), vm, byVM[vm])
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (t *Tier) shipVM(ctx context.Context, j *journal.Journal, term uint64, vm ferry.VMID, recs []journal.Record) error {
	v := t.vm(vm)
	v.mu.Lock()
	defer v.mu.Unlock()
	end, err := t.end(ctx, vm, v)
	if err != nil {
		return t.failed(vm, err)
	}
	first, last := recs[0].Seq, recs[len(recs)-1].Seq
	switch {
	case last <= end:
		return nil // shipped already
	case first <= end:
		recs = recs[end-first+1:]
	case first > end+1:
		if err := t.catchUp(ctx, j, term, vm, v, first-1); err != nil {
			return err
		}
	}
	return t.put(ctx, term, vm, v, recs)
}

func (t *Tier) failed(vm ferry.VMID, err error) error {
	t.m.errors.Inc()
	return fmt.Errorf("tier: vm %s: %w", vm, err)
}

// put ships recs, which continue the chain at v.seq.
func (t *Tier) put(ctx context.Context, term uint64, vm ferry.VMID, v *shipped, recs []journal.Record) error {
	first, last := recs[0].Seq, recs[len(recs)-1].Seq
	if first != v.seq+1 {
		return t.failed(vm, fmt.Errorf("segment %d-%d does not follow %d", first, last, v.seq))
	}
	seg := EncodeSegment(nil, recs)
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	if err := t.st.Put(pctx, segName(vm, first, last, term), seg); err != nil {
		return t.failed(vm, err)
	}
	t.m.putSeconds.Observe(time.Since(start).Seconds())
	t.m.bytes.Add(float64(len(seg)))
	t.m.segments.Inc()
	v.seq = last
	return nil
}

// catchUpBytes bounds one segment made of records read back from the
// journal.
const catchUpBytes = 16 << 20

// CatchUp ships what the journal holds of the VM beyond what the bucket
// holds: the process server calls it before it tells an agent its durable
// sequence, so that the agent never skips records the bucket lacks.
func (t *Tier) CatchUp(ctx context.Context, j *journal.Journal, term uint64, vm ferry.VMID) error {
	cur, err := j.VM(ctx, vm)
	if err != nil {
		return err
	}
	v := t.vm(vm)
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, err := t.end(ctx, vm, v); err != nil {
		return t.failed(vm, err)
	}
	return t.catchUp(ctx, j, term, vm, v, cur.LastSeq)
}

func (t *Tier) catchUp(ctx context.Context, j *journal.Journal, term uint64, vm ferry.VMID, v *shipped, upTo ferry.Seq) error {
	if upTo <= v.seq {
		return nil
	}
	// A journal whose retention folded records the bucket never had (it
	// served before it shipped) starts the bucket at its base images.
	if cur, err := j.VM(ctx, vm); err != nil {
		return err
	} else if v.seq < cur.BaseSeq {
		devs := j.Base(vm)
		if devs == nil {
			return t.failed(vm, fmt.Errorf("records up to %d are in base images that are not attached", cur.BaseSeq))
		}
		if _, err := t.putBase(ctx, vm, cur.BaseSeq, devs); err != nil {
			return t.failed(vm, err)
		}
		v.seq = cur.BaseSeq
	}
	var batch []journal.Record
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := t.put(ctx, term, vm, v, batch)
		batch, size = batch[:0], 0
		return err
	}
	err := j.Records(ctx, vm, v.seq, upTo, func(r *journal.Record) error {
		batch = append(batch, *r)
		size += len(r.Payload) + 64
		if size >= catchUpBytes {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return fmt.Errorf("tier: vm %s: ship what the bucket lacks: %w", vm, err)
	}
	if v.seq != upTo {
		// Records folded into the base by retention before they were
		// shipped: the bucket cannot rebuild the VM from its records.
		return t.failed(vm, fmt.Errorf("the journal holds records from after %d, the bucket ends at %d", v.seq, upTo))
	}
	return nil
}

// VMs lists the VMs the bucket holds a state of.
func (t *Tier) VMs(ctx context.Context) ([]ferry.VMID, error) {
	names, err := t.st.List(ctx, "vms/")
	if err != nil {
		return nil, err
	}
	var out []ferry.VMID
	for _, n := range names {
		if vm, ok := strings.CutSuffix(strings.TrimPrefix(n, "vms/"), "/state"); ok && !strings.Contains(vm, "/") {
			out = append(out, ferry.VMID(vm))
		}
	}
	return out, nil
}

// State is what the bucket keeps of a VM besides its records: its
// description and its recovery points.
type State struct {
	VM     journal.VM    `json:"vm"`
	Points []ferry.Point `json:"points"`
	Term   uint64        `json:"term"`
}

// PutState ships the VM's state.
func (t *Tier) PutState(ctx context.Context, st State) error {
	js, err := json.Marshal(st)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	if err := t.st.Put(pctx, stateName(st.VM.Name), js); err != nil {
		return t.failed(st.VM.Name, err)
	}
	return nil
}

// GetState reads the VM's state; objstore.ErrNotFound when the bucket has
// none.
func (t *Tier) GetState(ctx context.Context, vm ferry.VMID) (State, error) {
	js, err := t.st.Get(ctx, stateName(vm))
	if err != nil {
		return State{}, err
	}
	var st State
	if err := json.Unmarshal(js, &st); err != nil {
		return State{}, fmt.Errorf("tier: vm %s: state: %w", vm, err)
	}
	if st.VM.Name != vm {
		return State{}, fmt.Errorf("tier: vm %s: the state is of %q", vm, st.VM.Name)
	}
	return st, nil
}

// StateOf reads the VM's state from the journal.
func StateOf(ctx context.Context, j *journal.Journal, vm ferry.VMID, term uint64) (State, error) {
	v, err := j.VM(ctx, vm)
	if err != nil {
		return State{}, err
	}
	pts, err := j.Points(ctx, vm)
	if err != nil {
		return State{}, err
	}
	return State{VM: v, Points: pts, Term: term}, nil
}

// RestoreStats says what Restore did.
type RestoreStats struct {
	// Kept: the journal's copy was whole and was kept as it was.
	Kept bool
	// Base is the sequence of the base image the rebuild started from (0:
	// none).
	Base     ferry.Seq
	Segments int
	Records  int
	Bytes    int64 // segment bytes read
	// End is the VM's last sequence, in the bucket and now in the journal.
	End    ferry.Seq
	Points int
}

// Restore makes j's copy of the VM what the bucket holds: kept when it
// already ends where the bucket's does (at the same epoch), rebuilt from
// the bucket otherwise (the newest base image into new images of bases,
// then the records after it appended again, processed again, then the
// points put back). A VM the bucket knows nothing of is left as it is:
// what the journal holds of it is shipped by the next CatchUp. bases may
// be nil while no base was shipped.
func (t *Tier) Restore(ctx context.Context, j *journal.Journal, vm ferry.VMID, bases Bases) (RestoreStats, error) {
	var rs RestoreStats
	v := t.vm(vm)
	v.mu.Lock()
	defer v.mu.Unlock()
	v.known = false
	st, err := t.GetState(ctx, vm)
	if errors.Is(err, objstore.ErrNotFound) {
		segs, err := t.chain(ctx, vm, 0)
		if err != nil {
			return rs, err
		}
		if len(segs) == 0 {
			v.known, v.seq = true, 0
			return rs, nil
		}
		return rs, fmt.Errorf("tier: vm %s: the bucket holds records but no state", vm)
	}
	if err != nil {
		return rs, err
	}
	base, err := t.latestBase(ctx, vm)
	if err != nil {
		return rs, err
	}
	segs, err := t.chain(ctx, vm, base.Seq)
	if err != nil {
		return rs, err
	}
	rs.End = base.Seq
	if len(segs) > 0 {
		rs.End = segs[len(segs)-1].last
	}
	if cur, err := j.VM(ctx, vm); err == nil {
		if cur.LastSeq == rs.End && cur.Epoch == st.VM.Epoch {
			v.known, v.seq, rs.Kept = true, rs.End, true
			return rs, nil
		}
		if err := j.DeleteVM(ctx, vm); err != nil {
			return rs, err
		}
	} else if !errors.Is(err, journal.ErrNoVM) {
		return rs, err
	}
	if bases != nil {
		// Base images of an earlier copy must not show through.
		if err := bases.Drop(vm); err != nil {
			return rs, err
		}
	}
	desc := journal.VM{Name: vm, Disks: st.VM.Disks, Epoch: st.VM.Epoch, BlockSize: st.VM.BlockSize, Created: st.VM.Created}
	if base.Seq > 0 {
		if err := t.restoreBase(ctx, j, bases, desc, base); err != nil {
			return rs, err
		}
		rs.Base = base.Seq
	} else if err := j.CreateVM(ctx, desc); err != nil {
		return rs, err
	}
	for _, s := range segs {
		recs, size, err := t.read(ctx, vm, s)
		if err != nil {
			return rs, fmt.Errorf("tier: %w", err)
		}
		if s.first <= base.Seq {
			recs = recs[base.Seq-s.first+1:] // the base holds these
		}
		if err := j.Append(ctx, recs); err != nil {
			return rs, fmt.Errorf("tier: %s: %w", s.name, err)
		}
		rs.Segments++
		rs.Records += len(recs)
		rs.Bytes += size
	}
	if _, err := j.Process(ctx, vm, rs.End); err != nil {
		return rs, err
	}
	// The points as they were shipped (of those the base and the records
	// still hold: at the base or after it, and not on records the bucket
	// lacks, processed where they were journaled and never acknowledged),
	// and those of markers shipped after the state was.
	var pts []ferry.Point
	for _, p := range st.Points {
		if p.ID >= max(base.Seq, 1) && p.ID <= rs.End {
			pts = append(pts, p)
		}
	}
	regen, err := j.Points(ctx, vm)
	if err != nil {
		return rs, err
	}
	for _, p := range regen {
		if p.ID > st.VM.ProcessedSeq {
			pts = append(pts, p)
		}
	}
	sort.Slice(pts, func(a, b int) bool { return pts[a].ID < pts[b].ID })
	if err := j.SetPoints(ctx, vm, pts); err != nil {
		return rs, err
	}
	rs.Points = len(pts)
	// What the earlier owner had sealed away stays in the bucket only.
	if cold := min(st.VM.ColdSeq, rs.End); cold > base.Seq {
		if _, err := j.SealPayloads(ctx, vm, cold); err != nil {
			return rs, err
		}
	}
	v.known, v.seq = true, rs.End
	return rs, nil
}
