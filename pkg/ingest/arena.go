package ingest

import (
	"math/bits"
	"sync"
)

// Arenas hold a batch's compressed payloads, one buffer per batch, from
// pools in power-of-two sizes: a batch in flight holds about what its
// payloads need. (One buffer of a write's maximum per record held 1.1 MiB
// for every 4 KiB write, gigabytes across a few busy streams.)
const (
	minArenaShift = 16 // 64 KiB
	arenaClasses  = 9  // up to 16 MiB; larger arenas are not pooled
)

type arenas struct {
	pools [arenaClasses]sync.Pool
}

// arenaNeed is the room a payload of n bytes may take while it is encoded:
// what s2 asks for, and more than zstd writes for data it keeps.
func arenaNeed(n int) int { return n + n/8 + 64 }

func arenaClass(n int) int {
	if n <= 1<<minArenaShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minArenaShift
}

// get returns an empty buffer with room for n bytes.
func (a *arenas) get(n int) *[]byte {
	c := arenaClass(n)
	if c >= arenaClasses {
		b := make([]byte, 0, n)
		return &b
	}
	if b, ok := a.pools[c].Get().(*[]byte); ok {
		*b = (*b)[:0]
		return b
	}
	b := make([]byte, 0, 1<<(minArenaShift+c))
	return &b
}

// put returns a buffer from get once nothing refers to its bytes.
func (a *arenas) put(b *[]byte) {
	c := arenaClass(cap(*b))
	if c < arenaClasses && cap(*b) == 1<<(minArenaShift+c) {
		a.pools[c].Put(b)
	}
}

// encodeInto appends a payload encoded by encode into the arena when it
// lands there, and returns it. encode gets the arena's free room as dst.
func encodeInto(arena *[]byte, encode func(dst []byte) []byte) []byte {
	a := *arena
	free := a[len(a):len(a):cap(a)]
	out := encode(free)
	if len(out) > 0 && cap(free) > 0 && &out[:1][0] == &free[:1][0] {
		*arena = a[:len(a)+len(out)]
	}
	return out
}
