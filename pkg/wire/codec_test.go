package wire_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

func hello() *ferryv1.AgentMessage {
	dhcp := true
	return &ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Hello{Hello: &ferryv1.Hello{
		Vm: "web-1", Epoch: 3, AckedSeq: 1234, BlockSize: 4096, AgentVersion: "1.4.0",
		AgentInstance: "f740431ff8ef305e2970fffd547ac1ff", AgentHost: "web-1.example", HeartbeatMillis: 1000,
		Disks:   []*ferryv1.DiskInfo{{Name: "disk0", SizeBytes: 1 << 30}, {Name: "disk1", SizeBytes: 4 << 20}},
		Machine: &ferryv1.MachineInfo{Os: "linux", Dhcp: &dhcp, SshEnabledAtBoot: true},
	}}}
}

func codec(t *testing.T) encoding.CodecV2 {
	t.Helper()
	c := encoding.GetCodecV2(wire.Codec)
	if c == nil {
		t.Fatalf("codec %q is not registered", wire.Codec)
	}
	return c
}

// TestCodecRoundTrip: a message comes back as it left, small and large
// (the large one from gRPC's buffer pool), and its encoding is the
// protobuf encoding followed by eight bytes of check.
func TestCodecRoundTrip(t *testing.T) {
	c := codec(t)
	big := &ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Batch{Batch: &ferryv1.Batch{Records: []*ferryv1.Record{
		{Seq: 7, Body: &ferryv1.Record_Write{Write: &ferryv1.Write{Disk: 1, Offset: 8192, Length: 1 << 20, Data: make([]byte, 1<<20)}}},
	}}}}
	for _, m := range []*ferryv1.AgentMessage{hello(), big} {
		data, err := c.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		b := data.Materialize()
		plain, _ := proto.Marshal(m)
		if len(b) != len(plain)+8 {
			t.Fatalf("encoded %d bytes, want the %d of protobuf and 8 of check", len(b), len(plain))
		}
		var got ferryv1.AgentMessage
		if err := c.Unmarshal(data, &got); err != nil {
			t.Fatal(err)
		}
		data.Free()
		if !proto.Equal(&got, m) {
			t.Fatalf("came back as %v", &got)
		}
	}
	if _, err := c.Marshal("not a message"); err == nil {
		t.Error("a string was encoded")
	}
	// Protobuf refuses a string that is not UTF-8: in a small message and
	// in one large enough for the buffer pool.
	bad := hello()
	bad.GetHello().Vm = "web\xff"
	big.GetBatch().Records = append(big.GetBatch().Records, &ferryv1.Record{Seq: 8, Body: &ferryv1.Record_Marker{Marker: &ferryv1.Marker{Tag: "\xfe"}}})
	for _, m := range []*ferryv1.AgentMessage{bad, big} {
		if _, err := c.Marshal(m); err == nil {
			t.Errorf("a message with a string that is not UTF-8 was encoded (%d bytes)", proto.Size(m))
		}
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(make([]byte, 16))}, new(string)); err == nil {
		t.Error("decoded into a string")
	}
}

// TestCodecRefusesEveryFlip: each single bit flipped anywhere in an
// encoded hello (the body or the check) is refused as damaged, and
// leaves the message it would have filled untouched; so are encodings
// cut short, down to none.
func TestCodecRefusesEveryFlip(t *testing.T) {
	c := codec(t)
	data, err := c.Marshal(hello())
	if err != nil {
		t.Fatal(err)
	}
	enc := data.Materialize()
	for i := range len(enc) * 8 {
		b := append([]byte(nil), enc...)
		b[i/8] ^= 1 << (i % 8)
		got := &ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Heartbeat{Heartbeat: &ferryv1.Heartbeat{}}}
		if err := wire.Open(b, got); !errors.Is(err, wire.ErrDamaged) {
			t.Fatalf("bit %d flipped: %v, want %v", i, err, wire.ErrDamaged)
		}
		if got.GetHeartbeat() == nil {
			t.Fatalf("bit %d flipped: the message was changed", i)
		}
	}
	for n := range len(enc) {
		if err := wire.Open(enc[:n], new(ferryv1.AgentMessage)); !errors.Is(err, wire.ErrDamaged) {
			t.Fatalf("cut to %d bytes: %v", n, err)
		}
	}
	if err := wire.Open(enc, new(ferryv1.AgentMessage)); err != nil {
		t.Fatal(err)
	}
}

// flipping is the codec of a link that damages what it carries: it
// encodes like Ferry's and flips one bit of the body.
type flipping struct{ encoding.CodecV2 }

func (f flipping) Marshal(v any) (mem.BufferSlice, error) {
	data, err := f.CodecV2.Marshal(v)
	if err != nil {
		return nil, err
	}
	b := data.Materialize()
	data.Free()
	b[0] ^= 0x10
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

// TestCodecOverGRPC: over a real gRPC connection (the standard health
// service), a client that dials with Checked has its calls carried in
// Ferry's codec (the server sees the content subtype); a damaged request
// is refused by the server and a damaged answer by the client, each with
// an error Damaged recognizes; a client without the option is still
// served in plain protobuf.
func TestCodecOverGRPC(t *testing.T) {
	serve := func(opts ...grpc.ServerOption) (string, *string) {
		var seen string
		opts = append(opts, grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			seen = md.Get("content-type")[0]
			return h(ctx, req)
		}))
		s := grpc.NewServer(opts...)
		healthpb.RegisterHealthServer(s, health.NewServer())
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go s.Serve(l)
		t.Cleanup(s.Stop)
		return l.Addr().String(), &seen
	}
	dial := func(addr string, opts ...grpc.DialOption) healthpb.HealthClient {
		conn, err := grpc.NewClient(addr, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return healthpb.NewHealthClient(conn)
	}
	ctx := context.Background()
	addr, seen := serve()
	if _, err := dial(addr, wire.Checked()).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if *seen != "application/grpc+"+wire.Codec {
		t.Errorf("the server saw %q", *seen)
	}
	if _, err := dial(addr).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("a plain client: %v", err)
	}
	if *seen != "application/grpc" {
		t.Errorf("the server saw %q from a plain client", *seen)
	}
	_, err := dial(addr).Check(ctx, &healthpb.HealthCheckRequest{Service: "x"}, grpc.ForceCodecV2(flipping{codec(t)}))
	if !wire.Damaged(err) {
		t.Errorf("a damaged request: %v", err)
	}
	bad, _ := serve(grpc.ForceServerCodecV2(flipping{codec(t)}))
	if _, err := dial(bad, wire.Checked()).Check(ctx, &healthpb.HealthCheckRequest{}); !wire.Damaged(err) {
		t.Errorf("a damaged answer: %v", err)
	}
	if wire.Damaged(nil) || wire.Damaged(errors.New("unrelated")) {
		t.Error("Damaged of an unrelated error")
	}
}

// FuzzOpen: whatever arrives, Open does not panic. Bytes as they came
// are accepted only if their check matches (then they come back through
// the codec unchanged); the same bytes given their check decode exactly
// as plain protobuf decodes them, or are refused as protobuf refuses them.
func FuzzOpen(f *testing.F) {
	c := encoding.GetCodecV2(wire.Codec)
	data, err := c.Marshal(hello())
	if err != nil {
		f.Fatal(err)
	}
	enc := data.Materialize()
	f.Add(enc)
	f.Add(enc[:len(enc)-8])
	f.Add([]byte{})
	f.Add(make([]byte, 8))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m ferryv1.AgentMessage
		if err := wire.Open(b, &m); err == nil {
			again, err := c.Marshal(&m)
			if err != nil {
				t.Fatal(err)
			}
			var back ferryv1.AgentMessage
			if err := wire.Open(again.Materialize(), &back); err != nil || !proto.Equal(&back, &m) {
				t.Fatalf("accepted %x, which does not come back: %v", b, err)
			}
		}
		sealed := binary.LittleEndian.AppendUint64(append([]byte(nil), b...), xxhash.Sum64(b))
		var got, want ferryv1.AgentMessage
		err := wire.Open(sealed, &got)
		perr := proto.Unmarshal(b, &want)
		switch {
		case (err == nil) != (perr == nil):
			t.Fatalf("%x with its check: %v; protobuf: %v", b, err, perr)
		case errors.Is(err, wire.ErrDamaged):
			t.Fatalf("%x with its check refused as damaged", b)
		case err == nil && !proto.Equal(&got, &want):
			t.Fatalf("%x with its check decoded as %v; protobuf: %v", b, &got, &want)
		}
	})
}

// BenchmarkCodec: a 1 MiB batch of 256 writes through Ferry's codec and
// through gRPC's plain protobuf codec, encoded and decoded, in the same
// run (go test -bench Codec ./pkg/wire/).
func BenchmarkCodec(b *testing.B) {
	batch := &ferryv1.Batch{}
	for i := range 256 {
		data := make([]byte, 4096)
		for j := range data {
			data[j] = byte(i * j)
		}
		batch.Records = append(batch.Records, &ferryv1.Record{Seq: uint64(i + 1), Check: 1,
			Body: &ferryv1.Record_Write{Write: &ferryv1.Write{Offset: uint64(i) * 4096, Length: 4096, Data: data, Xxhash: 7}}})
	}
	m := &ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Batch{Batch: batch}}
	for _, name := range []string{"proto", wire.Codec} {
		c := encoding.GetCodecV2(name)
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(proto.Size(m)))
			for b.Loop() {
				data, err := c.Marshal(m)
				if err != nil {
					b.Fatal(err)
				}
				var got ferryv1.AgentMessage
				if err := c.Unmarshal(data, &got); err != nil {
					b.Fatal(err)
				}
				data.Free()
			}
		})
	}
}
