package ingest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry/pkg/journal"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestBatchHoldsOneArenaSizedToIt: a batch of many small writes holds one
// buffer about the size of its data until the commit (not one write's
// maximum per record, which held 1.1 MiB per 4 KiB write), and every
// payload in it still decodes to its write after the others were encoded.
func TestBatchHoldsOneArenaSizedToIt(t *testing.T) {
	for _, codec := range []journal.Codec{journal.CodecZstd, journal.CodecS2} {
		t.Run(codec.String(), func(t *testing.T) {
			r, err := New(Config{Journal: new(journal.Journal), Workers: 1, Codec: codec})
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			var recs []*ferryv1.Record
			var datas [][]byte
			for i := range 256 {
				data := make([]byte, 4096)
				switch i % 3 {
				case 0: // compresses
					copy(data, bytes.Repeat([]byte(fmt.Sprintf("block %d ", i)), 512))
				case 1: // does not: stored raw
					for k := range data {
						data[k] = byte(rng.Uint32())
					}
				case 2: // half and half
					copy(data, bytes.Repeat([]byte("x"), 2048))
					for k := 2048; k < 4096; k++ {
						data[k] = byte(rng.Uint32())
					}
				}
				datas = append(datas, data)
				recs = append(recs, &ferryv1.Record{Seq: uint64(i + 1), Body: &ferryv1.Record_Write{Write: &ferryv1.Write{
					Offset: uint64(i) * 4096, Length: 4096, Data: data, Xxhash: xxhash.Sum64(data)}}})
			}
			j := &job{sess: newSession(context.Background(), "vm"), in: recs}
			if err := r.process(j); err != nil {
				t.Fatal(err)
			}
			if len(j.bufs) != 1 {
				t.Fatalf("the batch holds %d buffers, want its one arena", len(j.bufs))
			}
			if held := cap(*j.bufs[0]); held > 2*arenaNeed(256*4096)+256*64 {
				t.Fatalf("the batch of 1 MiB holds a %d-byte arena", held)
			}
			raw := 0
			for i, out := range j.out {
				got, err := journal.Decode(out.Codec, out.Payload, out.Length, out.Sum)
				if err != nil || !bytes.Equal(got, datas[i]) {
					t.Fatalf("write %d (%v): %v", i, out.Codec, err)
				}
				if out.Codec == journal.CodecRaw {
					raw++
				}
			}
			if raw < 80 {
				t.Fatalf("only %d writes stored raw: the incompressible third should be", raw)
			}
			r.arenas.put(j.bufs[0])
		})
	}
}

func TestArenaClasses(t *testing.T) {
	a := &arenas{}
	for _, c := range []struct{ need, cap int }{{1, 64 << 10}, {64 << 10, 64 << 10}, {64<<10 + 1, 128 << 10}, {3 << 20, 4 << 20}, {16 << 20, 16 << 20}, {16<<20 + 1, 16<<20 + 1}} {
		b := a.get(c.need)
		if len(*b) != 0 || cap(*b) != c.cap {
			t.Fatalf("get(%d): len %d cap %d, want 0 and %d", c.need, len(*b), cap(*b), c.cap)
		}
		*b = append(*b, 1)
		a.put(b)
	}
	// What comes back from the pool is empty.
	if b := a.get(100); len(*b) != 0 {
		t.Fatalf("a pooled arena came back with %d bytes", len(*b))
	}
	// encodeInto advances over what landed in the arena, not over what
	// the encoder put elsewhere.
	b := a.get(10)
	out := encodeInto(b, func(dst []byte) []byte { return append(dst, "abc"...) })
	if string(out) != "abc" || len(*b) != 3 {
		t.Fatalf("in the arena: %q, arena %d bytes", out, len(*b))
	}
	out = encodeInto(b, func(dst []byte) []byte { return []byte("elsewhere") })
	if string(out) != "elsewhere" || len(*b) != 3 {
		t.Fatalf("elsewhere: %q, arena %d bytes", out, len(*b))
	}
	full := make([]byte, 4, 4)
	out = encodeInto(&full, func(dst []byte) []byte { return append(dst, "grown"...) })
	if string(out) != "grown" || len(full) != 4 {
		t.Fatalf("no room: %q, arena %d bytes", out, len(full))
	}
}
