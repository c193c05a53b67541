package ingest

import (
	"context"
	"testing"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// FuzzBatch feeds arbitrary bytes, decoded as a batch, to the stream rules
// and the verify-and-compress step. Whatever they accept the journal must
// store without complaint, and every accepted write must match its hash
// and lie within its disk.
func FuzzBatch(f *testing.F) {
	page := make([]byte, 4096)
	for i := range page {
		page[i] = byte(i)
	}
	seeds := []*ferryv1.Batch{
		{Records: []*ferryv1.Record{
			{Seq: 1, Body: &ferryv1.Record_Drain{Drain: &ferryv1.Drain{Begin: true}}},
			{Seq: 2, Body: &ferryv1.Record_Write{Write: &ferryv1.Write{Disk: 0, Offset: 4096, Length: 4096, Data: page, Xxhash: xxhash.Sum64(page)}}},
			{Seq: 3, Body: &ferryv1.Record_Write{Write: &ferryv1.Write{Disk: 1, Offset: 0, Length: 8192, Zero: true, Xxhash: ferry.ZeroSum(8192)}}},
			{Seq: 4, Body: &ferryv1.Record_Drain{Drain: &ferryv1.Drain{}}},
			{Seq: 5, Body: &ferryv1.Record_Marker{Marker: &ferryv1.Marker{Consistency: ferryv1.Consistency_CONSISTENCY_APP, Tag: "t"}}},
		}},
		{Records: []*ferryv1.Record{{Seq: 1, Body: &ferryv1.Record_Marker{Marker: &ferryv1.Marker{Consistency: ferryv1.Consistency_CONSISTENCY_CRASH}}}}},
		{Records: []*ferryv1.Record{{Seq: 1, Body: &ferryv1.Record_Write{Write: &ferryv1.Write{Offset: 1 << 20, Length: 4096, Data: page, Xxhash: 1}}}}},
	}
	for _, s := range seeds {
		for _, r := range s.Records {
			wire.Seal(r)
		}
		b, _ := proto.Marshal(s)
		f.Add(b)
	}
	r, err := New(Config{Journal: new(journal.Journal), Workers: 1})
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, raw []byte) {
		var b ferryv1.Batch
		if proto.Unmarshal(raw, &b) != nil {
			return
		}
		// A quarter of the inputs get correct checks, so the rules behind
		// the check are fuzzed too.
		if len(raw)%4 == 1 {
			for _, r := range b.Records {
				wire.Seal(r)
			}
		}
		// Half the inputs meet a VM whose initial drain has not ended.
		info := journal.VM{Name: "vm", Epoch: 1, BlockSize: 4096, Consistent: len(raw)%2 == 0,
			Disks: []ferry.Disk{{Name: "a", Size: 1 << 20}, {Name: "b", Size: 64 << 10}}}
		s := newSession(ctx, "vm")
		s.vm, s.next, s.consistent = info, 1, info.Consistent
		jb, err := r.check(s, &b)
		if err != nil {
			return
		}
		if err := r.process(jb); err != nil {
			return
		}
		if err := journal.CheckRecords(info, jb.out); err != nil {
			t.Fatalf("the journal would refuse what the stream rules accepted: %v", err)
		}
		for _, rec := range jb.out {
			if rec.Kind != journal.KindWrite {
				continue
			}
			if rec.Offset%4096 != 0 || rec.Length%4096 != 0 {
				t.Fatalf("accepted an unaligned write: %+v", rec)
			}
			if _, err := journal.Decode(rec.Codec, rec.Payload, rec.Length, rec.Sum); err != nil {
				t.Fatalf("accepted data does not verify: %v", err)
			}
		}
	})
}
