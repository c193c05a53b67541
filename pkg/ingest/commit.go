package ingest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ferrydr/ferry/pkg/journal"
)

// commitItem is one verified batch of one session, or a barrier.
type commitItem struct {
	sess    *session
	recs    []journal.Record
	bufs    []*[]byte // the batch's arena, returned after the commit
	bytes   int
	recv    time.Time
	barrier chan struct{} // closed once everything before it is committed
	held    *held         // the batch's budget, released after the commit
}

// committer is the one goroutine that writes the journal. It takes every
// batch that is waiting and commits them in one transaction (group commit),
// up to commitBytes, so that one fsync covers many batches under load and a
// lone batch is not held back waiting for company.
type committer struct {
	j           *journal.Journal
	ship        func(ctx context.Context, recs []journal.Record) error
	in          chan commitItem
	commitBytes int
	arenas      *arenas
	m           *metrics
}

func (c *committer) run(ctx context.Context) {
	var items []commitItem
	for {
		items = items[:0]
		select {
		case it := <-c.in:
			items = append(items, it)
		case <-ctx.Done():
			return
		}
		n := items[0].bytes
	more:
		for n < c.commitBytes {
			select {
			case it := <-c.in:
				items = append(items, it)
				n += it.bytes
			default:
				break more
			}
		}
		c.commit(ctx, items)
	}
}

func (c *committer) commit(ctx context.Context, items []commitItem) {
	var recs []journal.Record
	for _, it := range items {
		if it.sess != nil && it.sess.ctx.Err() == nil {
			recs = append(recs, it.recs...)
		}
	}
	var err error
	if len(recs) > 0 {
		// The shipment runs beside the journal's commit: both must end
		// well before anything is acknowledged, and the ack waits for the
		// slower of the two instead of their sum. It gets its own copy of
		// the records (Append marks them as it stores them).
		var shipErr error
		var shipped sync.WaitGroup
		if c.ship != nil {
			shipRecs := slices.Clone(recs)
			shipped.Add(1)
			go func() {
				defer shipped.Done()
				start := time.Now()
				shipErr = c.ship(ctx, shipRecs)
				c.m.shipSeconds.Observe(time.Since(start).Seconds())
			}()
		}
		start := time.Now()
		err = c.j.Append(ctx, recs)
		c.m.commitSeconds.Observe(time.Since(start).Seconds())
		if err != nil && ctx.Err() == nil {
			c.m.journalErrors.Inc()
		}
		shipped.Wait()
		if err == nil && shipErr != nil {
			err = fmt.Errorf("%w: %w", ErrNotDurable, shipErr)
		}
	}
	now := time.Now()
	for _, it := range items {
		switch {
		case it.barrier != nil:
			close(it.barrier)
		case it.sess.ctx.Err() != nil:
			// The session ended before its batch was committed: it was not
			// stored, and the agent learns the durable sequence on its next
			// hello.
		case err != nil:
			it.sess.fail(err)
		default:
			last := it.recs[len(it.recs)-1].Seq
			it.sess.setDurable(uint64(last))
			c.m.ackSeconds.Observe(now.Sub(it.recv).Seconds())
			for _, r := range it.recs {
				if r.Kind == journal.KindWrite {
					c.m.storedBytes.WithLabelValues(string(r.VM)).Add(float64(len(r.Payload)))
					c.m.logicalBytes.WithLabelValues(string(r.VM)).Add(float64(r.Length))
				}
			}
		}
		for _, b := range it.bufs {
			c.arenas.put(b)
		}
		it.held.release()
	}
}
