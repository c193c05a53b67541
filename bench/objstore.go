package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrydr/ferry/pkg/objstore"
)

// ObjStoreConfig configures ObjStore.
type ObjStoreConfig struct {
	// Versitygw is the S3 server's binary, run over Dir for the benchmark.
	Versitygw string
	Dir       string
	// Bytes written in each large-object run (default 256 MiB).
	Bytes int64
	// Small is how many 64 KiB objects the request-rate runs write and read
	// (default 1,000).
	Small int
}

// segmentSize is the size of the objects of the large runs: a sealed
// journal segment's.
const segmentSize = objstore.ChunkSize

// ObjStore measures the object store the scale-out's payloads will go to,
// against the local tier, on the same data in the same run: 4 MiB objects
// (incompressible, as compressed payloads are) written and read through
// pkg/objstore, checksummed and sealed, one at a time and four at once;
// the same bytes written to a local file with an fsync per 4 MiB (what
// the journal's own durability costs); and the request rate of 64 KiB
// objects. The S3 server is versitygw, run as its own process over a
// directory on the same disk: the ratio is the object path's own cost
// (HTTP, framing, sealing, the gateway), not a remote store's network.
func ObjStore(ctx context.Context, cfg ObjStoreConfig) (*Table, error) {
	if cfg.Bytes == 0 {
		cfg.Bytes = 256 << 20
	}
	if cfg.Small == 0 {
		cfg.Small = 1000
	}
	n := max(1, int(cfg.Bytes/segmentSize))
	total := int64(n) * segmentSize
	dir, err := os.MkdirTemp(cfg.Dir, "objstore-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	base, stop, err := startS3(ctx, cfg.Versitygw, dir, "bench")
	if err != nil {
		return nil, err
	}
	defer stop()
	key := make([]byte, 32)
	rand.Read(key)
	open := func(prefix string, k []byte) (*objstore.Store, error) {
		c := base
		c.Prefix, c.Key = prefix, k
		return objstore.Open(ctx, c)
	}
	plain, err := open("plain", nil)
	if err != nil {
		return nil, err
	}
	sealed, err := open("sealed", key)
	if err != nil {
		return nil, err
	}
	par, err := open("parallel", key)
	if err != nil {
		return nil, err
	}
	data := make([]byte, segmentSize)
	rand.Read(data)

	// The local tier: the same bytes, an fsync per segment.
	local := func() error {
		f, err := os.Create(filepath.Join(dir, "local"))
		if err != nil {
			return err
		}
		defer f.Close()
		for i := 0; i < n; i++ {
			if _, err := f.Write(data); err != nil {
				return err
			}
			if err := f.Sync(); err != nil {
				return err
			}
		}
		return nil
	}
	put := func(s *objstore.Store, workers, count int, obj []byte, prefix string) error {
		var wg sync.WaitGroup
		errs := make([]error, workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < count; i += workers {
					if err := s.Put(ctx, fmt.Sprintf("%s/%06d", prefix, i), obj); err != nil {
						errs[w] = err
						return
					}
				}
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	get := func(s *objstore.Store, count int, want []byte, prefix string) error {
		for i := 0; i < count; i++ {
			r, err := s.Open(ctx, fmt.Sprintf("%s/%06d", prefix, i))
			if err != nil {
				return err
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil {
				return err
			}
			if !bytes.Equal(got, want) {
				return fmt.Errorf("object %s/%06d came back different", prefix, i)
			}
		}
		return nil
	}
	timed := func(f func() error) (time.Duration, error) {
		start := time.Now()
		err := f()
		return time.Since(start), err
	}
	t := &Table{Title: fmt.Sprintf("object store (versitygw over the same disk) against the local tier: %d × 4 MiB incompressible, %d × 64 KiB", n, cfg.Small),
		Header: []string{"run", "MB/s", "objects/s", "vs local"}, Values: map[string]float64{}}
	row := func(name, key string, d time.Duration, bytes int64, objects int, localRate float64) float64 {
		rate := float64(bytes) / d.Seconds() / 1e6
		ops := float64(objects) / d.Seconds()
		vs := "1.00×"
		if localRate > 0 {
			vs = fmt.Sprintf("%.2f×", rate/localRate)
			t.Values[key+" vs local x"] = rate / localRate
		}
		t.Rows = append(t.Rows, []string{name, fmt.Sprintf("%.1f", rate), fmt.Sprintf("%.0f", ops), vs})
		t.Values[key+" MB/s"], t.Values[key+" objects/s"] = rate, ops
		return rate
	}
	d, err := timed(local)
	if err != nil {
		return nil, err
	}
	localRate := row("local file, fsync per 4 MiB", "local", d, total, n, 0)
	runs := []struct {
		name, key string
		f         func() error
		bytes     int64
		objects   int
	}{
		{"put 4 MiB, checksummed", "put plain", func() error { return put(plain, 1, n, data, "seg") }, total, n},
		{"put 4 MiB, sealed (AES-256-GCM)", "put sealed", func() error { return put(sealed, 1, n, data, "seg") }, total, n},
		{"put 4 MiB, sealed, 4 at once", "put sealed 4", func() error { return put(par, 4, n, data, "seg") }, total, n},
		{"get 4 MiB, sealed, verified", "get sealed", func() error { return get(sealed, n, data, "seg") }, total, n},
		{"put 64 KiB, sealed", "put small", func() error { return put(sealed, 1, cfg.Small, data[:64<<10], "small") }, int64(cfg.Small) << 16, cfg.Small},
		{"get 64 KiB, sealed, verified", "get small", func() error { return get(sealed, cfg.Small, data[:64<<10], "small") }, int64(cfg.Small) << 16, cfg.Small},
	}
	for _, r := range runs {
		d, err := timed(r.f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.name, err)
		}
		row(r.name, r.key, d, r.bytes, r.objects, localRate)
	}
	t.Notes = append(t.Notes, "versitygw's posix backend keeps each object as a file on the same disk as the local file (whether it syncs each is the gateway's own choice): the figures are the object path's cost on one machine, not a remote store's")
	return t, nil
}

// startS3 runs versitygw over DIR/s3 on a free port until stop, with an
// empty bucket; it returns the bucket's configuration.
func startS3(ctx context.Context, bin, dir, bucket string) (objstore.Config, func(), error) {
	addr, err := freeAddr()
	if err != nil {
		return objstore.Config{}, nil, err
	}
	stop, err := startVersitygw(bin, addr, filepath.Join(dir, "s3"))
	if err != nil {
		return objstore.Config{}, nil, err
	}
	cfg := objstore.Config{Endpoint: addr, AccessKey: "bench", SecretKey: benchSecret, Bucket: bucket}
	if err := objstore.CreateBucket(ctx, cfg); err != nil {
		stop()
		return objstore.Config{}, nil, err
	}
	return cfg, stop, nil
}

// startVersitygw runs the S3 server over root on addr (access key "bench")
// until stop.
func startVersitygw(bin, addr, root string) (stop func(), err error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	gw := exec.Command(bin, "--port", addr, "--access", "bench", "--secret", benchSecret, "posix", root)
	gw.Stderr = os.Stderr
	if err := gw.Start(); err != nil {
		return nil, fmt.Errorf("start versitygw (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0, or pass --versitygw): %w", err)
	}
	stop = func() { gw.Process.Kill(); gw.Wait() }
	if err := waitTCP(addr, 30*time.Second); err != nil {
		stop()
		return nil, fmt.Errorf("versitygw: %w", err)
	}
	return stop, nil
}

const benchSecret = "bench-secret-key"
