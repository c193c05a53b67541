package journal

import (
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry"
)

// FuzzDecode feeds arbitrary stored bytes to the record and payload
// decoders: they must never panic, and a payload that decodes must be
// exactly the length and hash its record says.
func FuzzDecode(f *testing.F) {
	c, _ := NewCompressor(CodecZstd)
	s2c, _ := NewCompressor(CodecS2)
	data := []byte("ferry journal payload ferry journal payload ferry journal payload")
	_, z := c.Encode(nil, data)
	_, s := s2c.Encode(nil, data)
	sum := xxhash.Sum64(data)
	f.Add(uint8(CodecZstd), z, len(data), sum, encodeMeta(&Record{VM: "vm", Seq: 1, Kind: KindWrite, Length: 4096, Tag: "x"}))
	f.Add(uint8(CodecS2), s, len(data), sum, encodeMeta(&Record{VM: "vm", Seq: 1, Kind: KindMarker, Consistency: ferry.App}))
	f.Add(uint8(CodecRaw), data, len(data), sum, []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, codec uint8, payload []byte, length int, sum uint64, meta []byte) {
		// Arbitrary metadata is refused by its checksum, never misread;
		// what encodeMeta wrote reads back the same.
		if r, err := decodeMeta("vm", 1, meta); err == nil && string(encodeMeta(&r)) != string(meta) {
			t.Fatalf("metadata %x accepted as %+v", meta, r)
		}
		if length < 0 || length > 1<<20 {
			return
		}
		out, err := decode(nil, Codec(codec), payload, length, sum)
		if err != nil {
			return
		}
		if len(out) != length || xxhash.Sum64(out) != sum {
			t.Fatalf("decode returned %d bytes hashing to %x for length %d sum %x", len(out), xxhash.Sum64(out), length, sum)
		}
	})
}
