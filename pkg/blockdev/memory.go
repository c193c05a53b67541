package blockdev

import (
	"context"
	"sort"
	"sync"
)

// memPage is the allocation unit of Memory: pages never written stay
// unallocated and read as zeros, so a large simulated disk costs only what
// has been written to it.
const memPage = 64 << 10

// Memory is a sparse in-memory Device. Snapshot copies it in time
// proportional to its allocated pages, sharing them copy-on-write.
type Memory struct {
	size int64

	mu    sync.RWMutex
	pages map[int64]*page
	gen   uint64 // pages of an older generation are shared with a snapshot
}

type page struct {
	gen uint64
	b   []byte
}

// NewMemory returns a zero-filled memory disk of the given size.
func NewMemory(size int64) *Memory {
	return &Memory{size: size, pages: make(map[int64]*page)}
}

func (m *Memory) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := checkRange("read", off, len(p), m.size); err != nil {
		return 0, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		idx, in := pos/memPage, int(pos%memPage)
		c := min(len(p)-n, memPage-in)
		if pg := m.pages[idx]; pg != nil {
			copy(p[n:n+c], pg.b[in:in+c])
		} else {
			clear(p[n : n+c])
		}
		n += c
	}
	return n, nil
}

func (m *Memory) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := checkRange("write", off, len(p), m.size); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		idx, in := pos/memPage, int(pos%memPage)
		c := min(len(p)-n, memPage-in)
		pg := m.pages[idx]
		if pg == nil {
			if IsZero(p[n : n+c]) {
				n += c
				continue
			}
			pg = &page{gen: m.gen, b: make([]byte, memPage)}
			m.pages[idx] = pg
		} else if pg.gen != m.gen {
			pg = &page{gen: m.gen, b: append([]byte(nil), pg.b...)}
			m.pages[idx] = pg
		}
		copy(pg.b[in:in+c], p[n:n+c])
		n += c
	}
	return n, nil
}

func (m *Memory) Size() int64 { return m.size }

func (m *Memory) Sync(ctx context.Context) error { return nil }

// DataExtents reports the allocated pages.
func (m *Memory) DataExtents(ctx context.Context, fn func(off, length int64) error) error {
	m.mu.RLock()
	idx := make([]int64, 0, len(m.pages))
	for i := range m.pages {
		idx = append(idx, i)
	}
	m.mu.RUnlock()
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	for _, i := range idx {
		off := i * memPage
		if err := fn(off, min(memPage, m.size-off)); err != nil {
			return err
		}
	}
	return nil
}

// Snapshot returns an independent copy of the disk's current content.
// Pages are shared until either side writes them.
func (m *Memory) Snapshot() *Memory {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gen++
	c := &Memory{size: m.size, pages: make(map[int64]*page, len(m.pages)), gen: m.gen}
	for i, pg := range m.pages {
		c.pages[i] = pg
	}
	return c
}
