package tier_test

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/tier"
)

func sampleRecords() []journal.Record {
	return []journal.Record{
		{VM: vm, Seq: 41, Kind: journal.KindDrainBegin, DrainReason: 2},
		{VM: vm, Seq: 42, Kind: journal.KindWrite, Disk: 1, Offset: 1 << 33, Length: 8192, Sum: 0xfeedface, Codec: journal.CodecZstd,
			Payload: []byte("compressed bytes"), BlockSums: []uint64{1, 2}},
		{VM: vm, Seq: 43, Kind: journal.KindWrite, Length: 4096, Codec: journal.CodecZero},
		{VM: vm, Seq: 44, Kind: journal.KindDrainEnd},
		{VM: vm, Seq: 45, Kind: journal.KindMarker, Consistency: ferry.App, Tag: "group/g/7", Time: time.Unix(1_800_000_000, 5).UTC()},
	}
}

// TestSegmentRoundTrip: every field of every kind of record comes back.
func TestSegmentRoundTrip(t *testing.T) {
	recs := sampleRecords()
	got, err := tier.DecodeSegment(vm, tier.EncodeSegment(nil, recs))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, recs) {
		t.Fatalf("got %+v\nwant %+v", got, recs)
	}
}

// TestSegmentRefused: damage the framing would let through (it cannot,
// but the decoder does not count on it) is refused, never read wild.
func TestSegmentRefused(t *testing.T) {
	good := tier.EncodeSegment(nil, sampleRecords())
	gap := sampleRecords()
	gap[2].Seq = 50
	cases := map[string][]byte{
		"empty":         nil,
		"not a segment": []byte("XSEG\x01\x00"),
		"version":       append([]byte("FSEG\x02"), good[5:]...),
		"cut":           good[:len(good)-3],
		"extended":      append(append([]byte(nil), good...), 0),
		"a gap":         tier.EncodeSegment(nil, gap),
		"count too big": append([]byte("FSEG\x01"), 0xff, 0xff, 0xff, 0x0f),
		"huge payload":  tier.EncodeSegment(nil, []journal.Record{{Seq: 1, Kind: journal.KindWrite, Payload: []byte{1}}})[:30],
	}
	for name, b := range cases {
		if _, err := tier.DecodeSegment(vm, b); !errors.Is(err, tier.ErrSegment) {
			t.Errorf("%s: %v, want ErrSegment", name, err)
		}
	}
}

// FuzzDecodeSegment: any bytes decode or are refused with ErrSegment;
// what decodes encodes to a segment that decodes the same.
func FuzzDecodeSegment(f *testing.F) {
	f.Add(tier.EncodeSegment(nil, sampleRecords()))
	f.Add(tier.EncodeSegment(nil, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := tier.DecodeSegment(vm, b)
		if err != nil {
			if !errors.Is(err, tier.ErrSegment) {
				t.Fatalf("error %v is not ErrSegment", err)
			}
			return
		}
		again, err := tier.DecodeSegment(vm, tier.EncodeSegment(nil, recs))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(again, recs) && !(len(again) == 0 && len(recs) == 0) {
			t.Fatalf("re-encoded segment decodes differently")
		}
		for i := range recs {
			if len(recs[i].Payload) > 0 && !bytes.Contains(b, recs[i].Payload) {
				t.Fatal("a payload that is not in the segment")
			}
		}
	})
}
