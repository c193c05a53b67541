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

// Memory is a sparse in-memory Device.
type Memory struct {
	size int64

	mu    sync.RWMutex
	pages map[int64][]byte // page index -> memPage bytes
}

// NewMemory returns a zero-filled memory disk of the given size.
func NewMemory(size int64) *Memory {
	return &Memory{size: size, pages: make(map[int64][]byte)}
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
			copy(p[n:n+c], pg[in:in+c])
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
			pg = make([]byte, memPage)
			m.pages[idx] = pg
		}
		copy(pg[in:in+c], p[n:n+c])
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

// Clone returns an independent copy of the disk's current content.
func (m *Memory) Clone() *Memory {
	m.mu.RLock()
	defer m.mu.RUnlock()
	c := NewMemory(m.size)
	for i, pg := range m.pages {
		c.pages[i] = append([]byte(nil), pg...)
	}
	return c
}
