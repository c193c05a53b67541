package objstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/objstore"
)

// open returns a store on a new bucket of a real S3 server (versitygw),
// with key (nil: checksums only), and the directory its objects are files
// in.
func open(t *testing.T, srv *ferrytest.S3, bucket string, key []byte) (*objstore.Store, string) {
	t.Helper()
	cfg := objstore.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: bucket, Prefix: "site-a", Key: key}
	if err := objstore.CreateBucket(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	s, err := objstore.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, filepath.Join(srv.Dir, bucket, "site-a")
}

func random(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

var key = bytes.Repeat([]byte{7}, 32)

// TestRoundTrip: objects of every size around the chunk boundaries come
// back as written, with and without a key; listing and deleting work by
// name under the prefix.
func TestRoundTrip(t *testing.T) {
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	for _, k := range [][]byte{nil, key} {
		s, _ := open(t, srv, fmt.Sprintf("rt-%v", k != nil), k)
		sizes := []int{0, 1, objstore.ChunkSize - 1, objstore.ChunkSize, objstore.ChunkSize + 1, 3*objstore.ChunkSize + 5}
		var names []string
		for i, n := range sizes {
			name := fmt.Sprintf("seg/%02d", i)
			names = append(names, name)
			data := random(uint64(i), n)
			if err := s.Put(ctx, name, data); err != nil {
				t.Fatalf("put %d bytes: %v", n, err)
			}
			got, err := s.Get(ctx, name)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("get %d bytes (key %v): %d bytes, %v", n, k != nil, len(got), err)
			}
			// Streamed, in writes of odd sizes, the same object.
			w, err := s.Create(ctx, name+".stream")
			if err != nil {
				t.Fatal(err)
			}
			for rest := data; len(rest) > 0; {
				step := min(len(rest), 1<<20+7)
				if _, err := w.Write(rest[:step]); err != nil {
					t.Fatal(err)
				}
				rest = rest[step:]
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Get(ctx, name+".stream"); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("streamed %d bytes (key %v): %d bytes back, %v", n, k != nil, len(got), err)
			}
			if err := s.Delete(ctx, name+".stream"); err != nil {
				t.Fatal(err)
			}
		}
		list, err := s.List(ctx, "seg/")
		if err != nil || !slices.Equal(list, names) {
			t.Fatalf("list: %q %v", list, err)
		}
		if all, err := s.List(ctx, ""); err != nil || !slices.Equal(all, names) {
			t.Fatalf("list of everything under the prefix: %q %v", all, err)
		}
		if err := s.Delete(ctx, names[0]); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, names[0]); !errors.Is(err, objstore.ErrNotFound) {
			t.Fatalf("a deleted object: %v", err)
		}
		if err := s.Delete(ctx, names[0]); err != nil {
			t.Fatalf("deleting a missing object: %v", err)
		}
		for _, bad := range []string{"", "/x", "x/", "a//b", "../x", "a/./b"} {
			if err := s.Put(ctx, bad, nil); err == nil {
				t.Errorf("name %q taken", bad)
			}
		}
	}
	cfg := objstore.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: "none"}
	if _, err := objstore.Open(ctx, cfg); !errors.Is(err, objstore.ErrNoBucket) {
		t.Fatalf("a bucket that does not exist: %v", err)
	}
}

// TestAbort: an object given up while written is not stored, nor does it
// replace the one of its name.
func TestAbort(t *testing.T) {
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	s, _ := open(t, srv, "abort", nil)
	if err := s.Put(ctx, "x", []byte("first")); err != nil {
		t.Fatal(err)
	}
	w, err := s.Create(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	w.Write(random(1, 2*objstore.ChunkSize))
	w.Abort()
	if err := w.Close(); err == nil {
		t.Fatal("an aborted object closed without an error")
	}
	if got, err := s.Get(ctx, "x"); err != nil || string(got) != "first" {
		t.Fatalf("after an aborted replacement: %q %v", got, err)
	}
}

// TestCorruption changes objects in the server's own files, as bit rot or
// a mistaken copy would: every change is refused with ErrCorrupt, and a
// store with another key (or none) opens none of them.
func TestCorruption(t *testing.T) {
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	for _, k := range [][]byte{nil, key} {
		bucket := fmt.Sprintf("rot-%v", k != nil)
		s, dir := open(t, srv, bucket, k)
		data := random(9, 2*objstore.ChunkSize+100) // chunks of 4 MiB, 4 MiB and 100 bytes
		put := func(name string) string {
			t.Helper()
			if err := s.Put(ctx, name, data); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(dir, name)
		}
		edit := func(what string, f func(b []byte) []byte) {
			t.Helper()
			path := put("obj")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, f(b), 0o644); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Get(ctx, "obj"); !errors.Is(err, objstore.ErrCorrupt) {
				t.Errorf("key %v, %s: %d bytes, %v", k != nil, what, len(got), err)
			}
		}
		const first = 6 + 5 // header, then the first chunk's head
		edit("a bit flipped in the data", func(b []byte) []byte { b[first+1000] ^= 0x10; return b })
		edit("a bit flipped in the header", func(b []byte) []byte { b[4] ^= 1; return b })
		edit("the last chunk cut off", func(b []byte) []byte { return b[:len(b)-(5+100+16+12)] })
		edit("cut inside a chunk", func(b []byte) []byte { return b[:first+100] })
		edit("bytes after the last chunk", func(b []byte) []byte { return append(b, 0) })
		edit("a chunk's last flag set", func(b []byte) []byte { b[first-1] = 1; return b })
		edit("a chunk's length cut to 5 bytes", func(b []byte) []byte { b[6], b[7], b[8], b[9] = 5, 0, 0, 0; return b })
		edit("the first two chunks swapped", func(b []byte) []byte {
			n := (len(b) - 6 - (5 + 100)) / 2 // two full chunks of the same size
			if k == nil {
				n = (len(b) - 6 - (5 + 100 + 8)) / 2
			}
			out := append([]byte(nil), b[:6]...)
			out = append(out, b[6+n:6+2*n]...)
			out = append(out, b[6:6+n]...)
			return append(out, b[6+2*n:]...)
		})
		// Another object's content under this name.
		other := put("other")
		copyOf, _ := os.ReadFile(other)
		os.WriteFile(put("obj"), copyOf, 0o644)
		if _, err := s.Get(ctx, "obj"); !errors.Is(err, objstore.ErrCorrupt) {
			t.Errorf("key %v: another object's content: %v", k != nil, err)
		}
		// Readers with the wrong key, or the other kind of store.
		put("obj")
		for _, wrong := range [][]byte{nil, bytes.Repeat([]byte{8}, 32)} {
			cfg := objstore.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: bucket, Prefix: "site-a", Key: wrong}
			w, err := objstore.Open(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(wrong, k) {
				continue
			}
			if _, err := w.Get(ctx, "obj"); !errors.Is(err, objstore.ErrCorrupt) {
				t.Errorf("written with key %v, read with key %v: %v", k != nil, wrong != nil, err)
			}
		}
	}
}

func TestParseURL(t *testing.T) {
	for in, want := range map[string]string{"s3://bucket": "bucket|", "s3://bucket/": "bucket|", "s3://bucket/a/b/": "bucket|a/b"} {
		b, p, err := objstore.ParseURL(in)
		if err != nil || b+"|"+p != want {
			t.Errorf("%s: %q %q %v", in, b, p, err)
		}
	}
	for _, bad := range []string{"http://bucket/x", "s3:///x", "s3://bucket/x?y=1", "s3://bucket/x#y", "s3://u:p@bucket/x", "bucket/x", "s3://%zz"} {
		if _, _, err := objstore.ParseURL(bad); err == nil {
			t.Errorf("%s taken", bad)
		}
	}
}
