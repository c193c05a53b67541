package wire

import (
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/encoding"
)

// Zstd names the gRPC compressor Ferry registers (zstd, fastest level):
// the recovery-site process server uses it on the WAN when it relays
// reverse replication to the master target, which decodes it because it
// imports this package too.
const Zstd = "zstd"

func init() { encoding.RegisterCompressor(zstdCompressor{}) }

var (
	zencoders sync.Pool
	zdecoders sync.Pool
)

type zstdCompressor struct{}

func (zstdCompressor) Name() string { return Zstd }

func (zstdCompressor) Compress(w io.Writer) (io.WriteCloser, error) {
	if e, ok := zencoders.Get().(*zstd.Encoder); ok {
		e.Reset(w)
		return &zwriter{e}, nil
	}
	e, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, err
	}
	return &zwriter{e}, nil
}

type zwriter struct{ *zstd.Encoder }

func (z *zwriter) Close() error {
	err := z.Encoder.Close()
	zencoders.Put(z.Encoder)
	return err
}

// Decompress reads one message; gRPC bounds what it reads from it by its
// maximum message size.
func (zstdCompressor) Decompress(r io.Reader) (io.Reader, error) {
	if d, ok := zdecoders.Get().(*zstd.Decoder); ok {
		if err := d.Reset(r); err != nil {
			return nil, err
		}
		return &zreader{d: d}, nil
	}
	d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(64<<20))
	if err != nil {
		return nil, err
	}
	return &zreader{d: d}, nil
}

type zreader struct {
	d    *zstd.Decoder
	done bool
}

func (z *zreader) Read(p []byte) (int, error) {
	if z.done {
		return 0, io.EOF
	}
	n, err := z.d.Read(p)
	if err == io.EOF {
		z.done = true
		z.d.Reset(nil)
		zdecoders.Put(z.d)
	}
	return n, err
}
