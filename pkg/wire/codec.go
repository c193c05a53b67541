package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// Codec names the gRPC codec Ferry's clients ask for (the content subtype
// "application/grpc+ferry"): protobuf with the xxhash64 of the encoded
// message after it. Every message of every call is checked where it is
// decoded, both ways: a hello, an acknowledgement or a command damaged on
// a link without TLS ends its call like a damaged record does, instead of
// being believed (a flipped agent instance in a hello would have stopped
// the agent as refused; a flipped acknowledgement would have let it drop
// records the receiver does not have). Receivers still decode the plain
// protobuf of clients that do not ask for it.
const Codec = "ferry"

// ErrDamaged is the error of a message whose check does not match: it
// was damaged on the way, and sending it again is the remedy.
var ErrDamaged = errors.New("message damaged in transit: its check does not match")

const checkLen = 8

func init() { encoding.RegisterCodecV2(checkedCodec{}) }

// Checked is the dial option that makes a connection's calls use Codec.
func Checked() grpc.DialOption {
	return grpc.WithDefaultCallOptions(grpc.CallContentSubtype(Codec))
}

// Damaged reports whether err ended a call because a message failed its
// check (gRPC reports it with the codec's error in its message).
func Damaged(err error) bool {
	return err != nil && (errors.Is(err, ErrDamaged) || strings.Contains(err.Error(), ErrDamaged.Error()))
}

type checkedCodec struct{}

func (checkedCodec) Name() string { return Codec }

// Marshal encodes v and appends the check of the encoding.
func (checkedCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("ferry codec: cannot encode %T: not a protobuf message", v)
	}
	size := proto.Size(m)
	opts := proto.MarshalOptions{UseCachedSize: true}
	var b []byte
	var buf *[]byte
	if mem.IsBelowBufferPoolingThreshold(size + checkLen) {
		b = make([]byte, 0, size+checkLen)
	} else {
		buf = mem.DefaultBufferPool().Get(size + checkLen)
		b = (*buf)[:0]
	}
	b, err := opts.MarshalAppend(b, m)
	if err != nil {
		if buf != nil {
			mem.DefaultBufferPool().Put(buf)
		}
		return nil, err
	}
	b = binary.LittleEndian.AppendUint64(b, xxhash.Sum64(b))
	if buf == nil {
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	*buf = b
	return mem.BufferSlice{mem.NewBuffer(buf, mem.DefaultBufferPool())}, nil
}

// Unmarshal checks the message's check, then decodes it into v.
func (checkedCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("ferry codec: cannot decode into %T: not a protobuf message", v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return Open(buf.ReadOnlyData(), m)
}

// Open decodes one message as Codec encodes it: the protobuf encoding,
// then its xxhash64 (little-endian). A message whose check does not match
// is refused with ErrDamaged and m is left as it was.
func Open(b []byte, m proto.Message) error {
	if len(b) < checkLen {
		return fmt.Errorf("%w (%d bytes, shorter than a check)", ErrDamaged, len(b))
	}
	body := b[:len(b)-checkLen]
	if binary.LittleEndian.Uint64(b[len(body):]) != xxhash.Sum64(body) {
		return ErrDamaged
	}
	return proto.Unmarshal(body, m)
}
