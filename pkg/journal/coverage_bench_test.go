package journal

import (
	"math/rand/v2"
	"testing"
)

// denseCoverage is the coverage map as it was before it became sparse: a
// bitmap of the whole disk. It is the baseline of BenchmarkCoverage.
type denseCoverage struct {
	words []uint64
	n     int64
}

func (c *denseCoverage) covered(i int64) bool { return c.words[i/64]&(1<<(i%64)) != 0 }

func (c *denseCoverage) take(first, n int64, fn func(first, n int64) error) error {
	i, end := first, min(first+n, c.n)
	for i < end {
		for i < end && c.covered(i) {
			i++
		}
		start := i
		for i < end && !c.covered(i) {
			c.words[i/64] |= 1 << (i % 64)
			i++
		}
		if i > start {
			if err := fn(start, i-start); err != nil {
				return err
			}
		}
	}
	return nil
}

// BenchmarkCoverage reads a point's worth of writes (newest first) through
// the coverage map: 20,000 writes of 1 to 16 blocks on a 1 GiB disk, the
// sparse map against the dense bitmap it replaced.
// benchBlocks is a variable, not a constant: the baseline's bitmap is then
// sized at run time and allocated as the old code allocated it, not kept
// on the stack.
var benchBlocks int64 = 1 << 18

func BenchmarkCoverage(b *testing.B) {
	nblocks := benchBlocks
	rng := rand.New(rand.NewPCG(3, 3))
	type w struct{ first, n int64 }
	writes := make([]w, 20000)
	for i := range writes {
		writes[i] = w{rng.Int64N(nblocks - 16), 1 + rng.Int64N(16)}
	}
	noop := func(int64, int64) error { return nil }
	b.Run("dense", func(b *testing.B) {
		for range b.N {
			c := &denseCoverage{words: make([]uint64, nblocks/64), n: nblocks}
			for _, x := range writes {
				c.take(x.first, x.n, noop)
			}
		}
	})
	b.Run("sparse", func(b *testing.B) {
		for range b.N {
			c := newCoverage(nblocks)
			for _, x := range writes {
				c.take(x.first, x.n, noop)
			}
		}
	})
}
