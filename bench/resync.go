package bench

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/processserver"
	"github.com/ferrydr/ferry/sim/fault"
)

// ResyncConfig configures the resync benchmark.
type ResyncConfig struct {
	Dir       string
	Bytes     int64
	Fractions []float64
}

// Resync measures a delta resync of a disk image with a fraction of its
// 4 KiB blocks changed, Ferry's agent against a process server holding the
// old image, beside rsync --inplace --no-whole-file of the same two images
// to an rsync daemon, both over loopback; wire bytes are counted on the
// connection.
func Resync(ctx context.Context, cfg ResyncConfig) (*Table, error) {
	if cfg.Bytes == 0 {
		cfg.Bytes = 1 << 30
	}
	if cfg.Fractions == nil {
		cfg.Fractions = []float64{0.001, 0.01, 0.1}
	}
	if _, err := exec.LookPath("rsync"); err != nil {
		return nil, fmt.Errorf("rsync is not installed (apt-get install -y rsync): %w", err)
	}
	t := &Table{
		Title:  fmt.Sprintf("resync: %d MiB image (~2:1 data), changed 4 KiB blocks at random", cfg.Bytes>>20),
		Header: []string{"changed", "ferry s", "ferry wire MiB", "rsync s", "rsync wire MiB", "rsync -B4096 s", "rsync -B4096 wire MiB", "ferry speedup", "wire ferry/rsync"},
		Values: map[string]float64{},
	}
	old := Fill(Mixed, int(cfg.Bytes), 3)
	for _, frac := range cfg.Fractions {
		cur := append([]byte(nil), old...)
		rng := rand.New(rand.NewPCG(uint64(frac*1e6), 5))
		nblocks := int(cfg.Bytes / 4096)
		for i := 0; i < int(float64(nblocks)*frac); i++ {
			b := rng.IntN(nblocks)
			for k := b * 4096; k < (b+1)*4096; k++ {
				cur[k] = byte(rng.Uint32())
			}
		}
		fs, fb, err := ferryResync(ctx, cfg, old, cur)
		if err != nil {
			return nil, fmt.Errorf("ferry at %g: %w", frac, err)
		}
		rs, rb, err := rsyncResync(ctx, cfg, old, cur)
		if err != nil {
			return nil, fmt.Errorf("rsync at %g: %w", frac, err)
		}
		r4, r4b, err := rsyncResync(ctx, cfg, old, cur, "--block-size=4096")
		if err != nil {
			return nil, fmt.Errorf("rsync --block-size=4096 at %g: %w", frac, err)
		}
		// Ferry is held to the faster rsync, and to that one's bytes.
		best, bestBytes := rs, rb
		if r4 < rs {
			best, bestBytes = r4, r4b
		}
		pct := fmt.Sprintf("%g%%", frac*100)
		t.Rows = append(t.Rows, []string{pct, f2(fs.Seconds()), f2(float64(fb) / (1 << 20)),
			f2(rs.Seconds()), f2(float64(rb) / (1 << 20)), f2(r4.Seconds()), f2(float64(r4b) / (1 << 20)),
			f2(best.Seconds() / fs.Seconds()), f2(float64(fb) / float64(bestBytes))})
		t.Values[pct+" ferry s"] = fs.Seconds()
		t.Values[pct+" ferry wire bytes"] = float64(fb)
		t.Values[pct+" rsync s"] = rs.Seconds()
		t.Values[pct+" rsync wire bytes"] = float64(rb)
		t.Values[pct+" rsync -B4096 s"] = r4.Seconds()
		t.Values[pct+" rsync -B4096 wire bytes"] = float64(r4b)
		t.Values[pct+" speedup"] = best.Seconds() / fs.Seconds()
		t.Values[pct+" wire ratio"] = float64(fb) / float64(bestBytes)
		if frac == 0.01 {
			t.AddTarget("resync 1% speed-up over the faster rsync", best.Seconds()/fs.Seconds(), 5, false, "x")
			t.AddTarget("resync 1% wire bytes / that rsync's", float64(fb)/float64(bestBytes), 1, true, "x")
		}
	}
	t.Notes = append(t.Notes, "ferry: agent restarted after a crash resyncs by 64 KiB chunk hashes, then 4 KiB block hashes of differing chunks; time from agent start to in sync",
		"rsync --inplace --no-whole-file --ignore-times to an rsync daemon, with its default block size (about the square root of the file's size) and with --block-size=4096, Ferry's block; speed-up and wire ratio are against the faster of the two")
	return t, nil
}

func ferryResync(ctx context.Context, cfg ResyncConfig, old, cur []byte) (time.Duration, int64, error) {
	dir, err := os.MkdirTemp(cfg.Dir, "resync-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	ps, err := processserver.New(processserver.Config{DataDir: filepath.Join(dir, "ps"), Listen: "127.0.0.1:0", Logger: quietLogger()})
	if err != nil {
		return 0, 0, err
	}
	if err := ps.Open(ctx); err != nil {
		return 0, 0, err
	}
	defer ps.Close(ctx)
	px, err := fault.Listen(ps.Addr(), 0)
	if err != nil {
		return 0, 0, err
	}
	defer px.Close()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, old, 0o644); err != nil {
		return 0, 0, err
	}
	disk, err := blockdev.OpenFile(img, false)
	if err != nil {
		return 0, 0, err
	}
	defer disk.Close()
	acfg := agent.Config{VM: "resync", Disks: []agent.Disk{{Name: "os", Device: disk}}, StateDir: filepath.Join(dir, "agent"), Target: px.Addr(),
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, Logger: quietLogger(), Registerer: prometheus.NewRegistry()}
	a, err := agent.New(acfg)
	if err != nil {
		return 0, 0, err
	}
	if err := a.Open(ctx); err != nil {
		return 0, 0, err
	}
	if err := a.WaitSynced(ctx); err != nil {
		return 0, 0, err
	}
	a.Abort() // a crash: the next agent compares hashes
	for off := 0; off < len(cur); off += 4096 {
		if !bytes.Equal(cur[off:off+4096], old[off:off+4096]) {
			disk.WriteAt(ctx, cur[off:off+4096], int64(off))
		}
	}
	acfg.Registerer = prometheus.NewRegistry()
	b, err := agent.New(acfg)
	if err != nil {
		return 0, 0, err
	}
	up0, down0 := px.Bytes()
	start := time.Now()
	if err := b.Open(ctx); err != nil {
		return 0, 0, err
	}
	defer b.Close(ctx)
	if err := b.WaitSynced(ctx); err != nil {
		return 0, 0, err
	}
	up, down := px.Bytes()
	el, wire := time.Since(start), up+down-up0-down0
	// The replica must now be the new image.
	sums, _, err := ps.Journal().ChunkHashes(ctx, "resync", 0, 64<<10, nil)
	if err != nil {
		return 0, 0, err
	}
	for c, h := range sums {
		if h != xxhash.Sum64(cur[c*64<<10:(c+1)*64<<10]) {
			return 0, 0, fmt.Errorf("replica chunk %d differs from the image after resync", c)
		}
	}
	return el, wire, nil
}

var rsyncStat = regexp.MustCompile(`Total bytes (sent|received): ([0-9,.]+)`)

func rsyncResync(ctx context.Context, cfg ResyncConfig, old, cur []byte, flags ...string) (time.Duration, int64, error) {
	dir, err := os.MkdirTemp(cfg.Dir, "rsync-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	os.MkdirAll(src, 0o755)
	os.MkdirAll(dst, 0o755)
	if err := os.WriteFile(filepath.Join(src, "disk.img"), cur, 0o644); err != nil {
		return 0, 0, err
	}
	if err := os.WriteFile(filepath.Join(dst, "disk.img"), old, 0o644); err != nil {
		return 0, 0, err
	}
	addr, err := freeAddr()
	if err != nil {
		return 0, 0, err
	}
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "rsyncd.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("use chroot = false\npid file = %s/rsyncd.pid\n[m]\n  path = %s\n  read only = false\n  uid = %d\n  gid = %d\n",
		dir, dst, os.Getuid(), os.Getgid())), 0o644)
	d := exec.Command("rsync", "--daemon", "--no-detach", "--config="+conf, "--address=127.0.0.1", "--port="+port)
	if err := d.Start(); err != nil {
		return 0, 0, err
	}
	defer func() { d.Process.Kill(); d.Wait() }()
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	args := append([]string{"--inplace", "--no-whole-file", "--ignore-times", "--stats"}, flags...)
	args = append(args, filepath.Join(src, "disk.img"), fmt.Sprintf("rsync://127.0.0.1:%s/m/disk.img", port))
	out, err := exec.CommandContext(ctx, "rsync", args...).CombinedOutput()
	el := time.Since(start)
	if err != nil {
		return 0, 0, fmt.Errorf("rsync: %v: %s", err, out)
	}
	var wire int64
	for _, m := range rsyncStat.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseFloat(regexp.MustCompile(`[,]`).ReplaceAllString(m[2], ""), 64)
		wire += int64(v)
	}
	got, err := os.ReadFile(filepath.Join(dst, "disk.img"))
	if err != nil || !bytes.Equal(got, cur) {
		return 0, 0, fmt.Errorf("rsync did not produce the new image")
	}
	return el, wire, nil
}
