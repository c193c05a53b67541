package tier

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/ferrydr/ferry/internal/svctest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/objstore"
)

// TestBaseImageRefused: a base image whose runs do not fit its disk (or
// that goes on after its end, or names another size) is refused, never
// written wild. The framing refuses damage first; this is what a
// well-framed image with bad content meets.
func TestBaseImageRefused(t *testing.T) {
	srv := svctest.StartS3(t)
	ctx := context.Background()
	cfg := objstore.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: "images", Key: bytes.Repeat([]byte{4}, 32)}
	if err := objstore.CreateBucket(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	st, err := objstore.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr := New(Config{Store: st})
	const size = 2*baseRun + 8192
	image := func(sz uint64, runs ...[2]uint64) []byte {
		b := append([]byte(baseMagic), baseVersion)
		b = binary.BigEndian.AppendUint64(b, sz)
		for _, r := range runs {
			b = binary.BigEndian.AppendUint64(b, r[0])
			b = binary.BigEndian.AppendUint32(b, uint32(r[1]))
			b = append(b, bytes.Repeat([]byte{7}, int(r[1]))...)
		}
		b = binary.BigEndian.AppendUint64(b, baseEnd)
		return binary.BigEndian.AppendUint32(b, 0)
	}
	good := image(size, [2]uint64{size - 4096, 4096}, [2]uint64{0, baseRun})
	cases := map[string][]byte{
		"another size":        image(size+4096, [2]uint64{0, 4096}),
		"a run past the disk": image(size, [2]uint64{size - 4096, 8192}),
		"a run at the end":    image(size, [2]uint64{size, 4096}),
		"an empty run":        image(size, [2]uint64{0, 0}),
		"a run too long":      image(size, [2]uint64{0, baseRun + 4096}),
		"bytes after the end": append(append([]byte(nil), good...), 0),
	}
	if err := st.Put(ctx, "good", good); err != nil {
		t.Fatal(err)
	}
	d := blockdev.NewMemory(size)
	if err := tr.getImage(ctx, "good", d); err != nil {
		t.Fatalf("a good image: %v", err)
	}
	for name, b := range cases {
		if err := st.Put(ctx, "bad", b); err != nil {
			t.Fatal(err)
		}
		if err := tr.getImage(ctx, "bad", blockdev.NewMemory(size)); !errors.Is(err, errBaseImage) {
			t.Errorf("%s: %v, want errBaseImage", name, err)
		}
	}
}
