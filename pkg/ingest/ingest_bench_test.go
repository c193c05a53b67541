package ingest_test

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/wire"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// MixedData returns n bytes of 4 KiB blocks that are 20% zeros, 30% random
// and 50% text-like: about 2:1 for zstd.
func mixedData(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	words := []string{"replica ", "journal ", "failover ", "block ", "point ", "commit ", "disk ", "agent "}
	for off := 0; off < n; off += 4096 {
		blk := b[off:min(off+4096, n)]
		switch r := rng.IntN(10); {
		case r < 2:
		case r < 5:
			for i := range blk {
				blk[i] = byte(rng.Uint32())
			}
		default:
			for i := 0; i < len(blk); {
				w := words[rng.IntN(len(words))]
				if rng.IntN(3) == 0 {
					w = string(rune('a'+rng.IntN(26))) + w
				}
				i += copy(blk[i:], w)
			}
		}
	}
	return b
}

// BenchmarkIngest streams ~2:1 data through a real process server over
// loopback gRPC: validation, xxhash check, compression, group commit to
// bbolt with fsync, and durable acks. MB/s is of input bytes.
func BenchmarkIngest(b *testing.B) {
	for _, codec := range []string{"zstd", "s2"} {
		b.Run(codec, func(b *testing.B) {
			ps := ferrytest.StartPS(b, func(c *processserver.Config) { c.Codec = codec })
			cc := ferrytest.Dial(b, ps.Addr)
			const diskSize = 1 << 30
			const rec, perBatch = 64 << 10, 16 // 1 MiB batches of 64 KiB writes
			data := mixedData(64<<20, 1)
			sums := make([]uint64, len(data)/rec)
			for i := range sums {
				sums[i] = xxhash.Sum64(data[i*rec : (i+1)*rec])
			}
			stream, err := ferryv1.NewReplicationClient(cc).Replicate(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			stream.Send(&ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Hello{Hello: &ferryv1.Hello{
				Vm: "bench", Epoch: 1, BlockSize: 4096, Disks: []*ferryv1.DiskInfo{{Name: "os", SizeBytes: diskSize}}}}})
			if _, err := stream.Recv(); err != nil {
				b.Fatal(err)
			}
			seq := uint64(0)
			next := func() *ferryv1.Record {
				seq++
				i := int(seq) % len(sums)
				return wire.Seal(&ferryv1.Record{Seq: seq, Body: &ferryv1.Record_Write{Write: &ferryv1.Write{
					Offset: uint64(seq*rec) % diskSize, Length: rec, Data: data[i*rec : (i+1)*rec], Xxhash: sums[i]}}})
			}
			// Acks arrive on their own goroutine; the window keeps 32 MiB in
			// flight, as the agent does.
			acked := make(chan uint64, 1024)
			go func() {
				for {
					m, err := stream.Recv()
					if err != nil {
						close(acked)
						return
					}
					acked <- m.GetAck().GetDurableSeq()
				}
			}()
			const window = 32 * perBatch
			var last uint64
			b.SetBytes(rec * perBatch)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for seq-last > window {
					a, ok := <-acked
					if !ok {
						b.Fatal("stream ended")
					}
					last = a
				}
				recs := make([]*ferryv1.Record, perBatch)
				for j := range recs {
					recs[j] = next()
				}
				if err := stream.Send(&ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Batch{Batch: &ferryv1.Batch{Records: recs}}}); err != nil {
					b.Fatal(err)
				}
			}
			for last < seq {
				a, ok := <-acked
				if !ok {
					b.Fatal("stream ended")
				}
				last = a
			}
			b.StopTimer()
			vm, _ := ps.Journal().VM(context.Background(), "bench")
			if vm.StoredBytes > 0 {
				b.ReportMetric(float64(vm.LogicalBytes)/float64(vm.StoredBytes), "ratio")
			}
			stream.CloseSend()
		})
	}
}
