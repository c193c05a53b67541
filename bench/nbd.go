package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/nbd"
)

// NBDConfig configures the NBD front-end benchmark.
type NBDConfig struct {
	Bin   string // directory holding ferry-ps
	Dir   string
	Bytes int64 // size of the disk and of the sequential copy (default 1 GiB)
	// Runtime of each fio run (default 5 s).
	Runtime time.Duration
}

// NBD measures the agent's NBD front end with real clients against a plain
// file on the same machine, with ferry-ps journaling what the front end
// takes: a sequential copy of an image by qemu-img convert, and 4 KiB
// random writes by fio at queue depths 32 and 1.
func NBD(ctx context.Context, cfg NBDConfig) (*Table, error) {
	if cfg.Bytes == 0 {
		cfg.Bytes = 1 << 30
	}
	if cfg.Runtime == 0 {
		cfg.Runtime = 5 * time.Second
	}
	for _, tool := range []string{"qemu-img", "fio"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed (apt-get install -y qemu-utils fio): %w", tool, err)
		}
	}
	dir, err := os.MkdirTemp(cfg.Dir, "nbd-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "src.img")
	if _, err := writeImage(src, cfg.Bytes, 11); err != nil {
		return nil, err
	}
	t := &Table{
		Title:  fmt.Sprintf("nbd: the agent's NBD front end (Unix socket) with ferry-ps journaling, against a plain file; %d MiB disk", cfg.Bytes>>20),
		Header: []string{"workload", "ferry", "plain file (writeback)", "plain file (O_DIRECT)", "ferry/writeback", "ferry/O_DIRECT"},
		Values: map[string]float64{},
	}

	// The baselines: the same clients against a plain file.
	plain := filepath.Join(dir, "plain.img")
	if err := createSparse(plain, cfg.Bytes); err != nil {
		return nil, err
	}
	seqWB, err := timeCmd(ctx, "qemu-img", "convert", "-n", "-t", "writeback", "-f", "raw", "-O", "raw", src, plain)
	if err != nil {
		return nil, err
	}
	seqDirect, err := timeCmd(ctx, "qemu-img", "convert", "-n", "-t", "none", "-f", "raw", "-O", "raw", src, plain)
	if err != nil {
		return nil, err
	}
	fileJob := func(depth int, direct bool) (fioResult, error) {
		d := "0"
		if direct {
			d = "1"
		}
		return runFio(ctx, cfg, depth, "--filename="+plain, "--ioengine=io_uring", "--direct="+d)
	}
	var plainWB, plainDirect [2]fioResult // queue depth 32, 1
	for i, depth := range []int{32, 1} {
		if plainWB[i], err = fileJob(depth, false); err != nil {
			return nil, err
		}
		if plainDirect[i], err = fileJob(depth, true); err != nil {
			return nil, err
		}
	}

	// Ferry: the same clients against the agent's export.
	ps, err := startPS(ctx, cfg.Bin, dir)
	if err != nil {
		return nil, err
	}
	defer ps.stop()
	a, err := startAgent(ctx, ps.Addr, dir, "nbd", cfg.Bytes)
	if err != nil {
		return nil, err
	}
	defer a.Close(ctx)
	srv := nbd.NewServer(quietLogger(), nbd.Access{})
	defer srv.Close()
	for _, e := range a.NBDExports() {
		srv.Add(e)
	}
	sock := filepath.Join(dir, "agent.sock")
	l, err := nbd.Listen("unix:" + sock)
	if err != nil {
		return nil, err
	}
	go srv.Serve(l)
	uri := "nbd+unix:///os?socket=" + sock
	// The copy counts until ferry-ps holds it durably.
	start := time.Now()
	seqClient, err := timeCmd(ctx, "qemu-img", "convert", "-n", "-t", "writeback", "-f", "raw", "-O", "raw", src, uri)
	if err != nil {
		return nil, err
	}
	if err := a.WaitSynced(ctx); err != nil {
		return nil, err
	}
	seqFerry := time.Since(start)
	if _, err := timeCmd(ctx, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, filepath.Join(dir, "nbd.img")); err != nil {
		return nil, fmt.Errorf("the protected disk differs from the image copied into it: %w", err)
	}
	var ferry [2]fioResult
	for i, depth := range []int{32, 1} {
		if ferry[i], err = runFio(ctx, cfg, depth, "--ioengine=nbd", "--uri="+uri); err != nil {
			return nil, err
		}
		if err := a.WaitSynced(ctx); err != nil {
			return nil, err
		}
	}

	mbs := func(d time.Duration) float64 { return mbps(cfg.Bytes, d) }
	t.Rows = append(t.Rows,
		[]string{"sequential copy MB/s (qemu-img convert)", f1(mbs(seqFerry)), f1(mbs(seqWB)), f1(mbs(seqDirect)), f2(seqWB.Seconds() / seqFerry.Seconds()), f2(seqDirect.Seconds() / seqFerry.Seconds())},
		[]string{"4 KiB random writes, depth 32, IOPS", f1(ferry[0].iops), f1(plainWB[0].iops), f1(plainDirect[0].iops), f2(ferry[0].iops / plainWB[0].iops), f2(ferry[0].iops / plainDirect[0].iops)},
		[]string{"4 KiB random writes, depth 1, IOPS", f1(ferry[1].iops), f1(plainWB[1].iops), f1(plainDirect[1].iops), f2(ferry[1].iops / plainWB[1].iops), f2(ferry[1].iops / plainDirect[1].iops)},
		[]string{"4 KiB random writes, depth 1, p50 latency µs", f1(ferry[1].p50us), f1(plainWB[1].p50us), f1(plainDirect[1].p50us), f2(ferry[1].p50us / plainWB[1].p50us), f2(ferry[1].p50us / plainDirect[1].p50us)})
	t.Values["sequential ferry MB/s"] = mbs(seqFerry)
	t.Values["sequential ferry MB/s until qemu-img ended"] = mbs(seqClient)
	t.Values["sequential writeback MB/s"] = mbs(seqWB)
	t.Values["sequential O_DIRECT MB/s"] = mbs(seqDirect)
	for i, depth := range []int{32, 1} {
		for name, r := range map[string]fioResult{"ferry": ferry[i], "writeback": plainWB[i], "O_DIRECT": plainDirect[i]} {
			t.Values[fmt.Sprintf("random depth %d %s IOPS", depth, name)] = r.iops
			t.Values[fmt.Sprintf("random depth %d %s p50 µs", depth, name)] = r.p50us
		}
	}
	t.AddTarget("nbd sequential copy vs plain file (writeback)", seqWB.Seconds()/seqFerry.Seconds(), 0.8, false, "x")
	t.AddTarget("nbd random depth 32 IOPS vs plain file (O_DIRECT)", ferry[0].iops/plainDirect[0].iops, 0.5, false, "x")
	t.AddTarget("nbd random depth 1 p50 latency vs plain file (O_DIRECT)", ferry[1].p50us/plainDirect[1].p50us, 2, true, "x")
	t.Notes = append(t.Notes,
		fmt.Sprintf("ferry's sequential copy is timed until ferry-ps holds every write durably (qemu-img itself ended after %.2f s, %.1f MB/s); the copied image is compared with its source", seqClient.Seconds(), mbs(seqClient)),
		"fio: --rw=randwrite --bs=4k, buffers refilled ~50% compressible, "+cfg.Runtime.String()+" per run; ferry through fio's nbd engine, the plain file through io_uring",
		"random-write goals are against the plain file opened O_DIRECT, as a hypervisor opens a VM's disk (cache=none); the writeback column is the page cache's speed")
	return t, nil
}

type fioResult struct {
	iops  float64
	p50us float64
}

// runFio runs one 4 KiB random-write fio job at a queue depth and returns
// its IOPS and median completion latency.
func runFio(ctx context.Context, cfg NBDConfig, depth int, target ...string) (fioResult, error) {
	args := append([]string{"--name=randwrite", "--rw=randwrite", "--bs=4k", fmt.Sprintf("--size=%d", cfg.Bytes),
		fmt.Sprintf("--iodepth=%d", depth), fmt.Sprintf("--runtime=%dms", cfg.Runtime.Milliseconds()), "--time_based",
		"--refill_buffers", "--buffer_compress_percentage=50", "--randrepeat=1", "--norandommap", "--output-format=json"}, target...)
	out, err := exec.CommandContext(ctx, "fio", args...).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return fioResult{}, fmt.Errorf("fio %v: %w: %s", args, err, ee.Stderr)
		}
		return fioResult{}, fmt.Errorf("fio: %w", err)
	}
	var rep struct {
		Jobs []struct {
			Error int `json:"error"`
			Write struct {
				IOPS float64 `json:"iops"`
				Clat struct {
					Percentile map[string]float64 `json:"percentile"`
				} `json:"clat_ns"`
			} `json:"write"`
		} `json:"jobs"`
	}
	// fio may print notes before its JSON.
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return fioResult{}, fmt.Errorf("fio's report: %w", err)
	}
	if len(rep.Jobs) != 1 || rep.Jobs[0].Error != 0 || rep.Jobs[0].Write.IOPS == 0 {
		return fioResult{}, fmt.Errorf("fio %v: no writes measured: %s", args, out)
	}
	w := rep.Jobs[0].Write
	return fioResult{iops: w.IOPS, p50us: w.Clat.Percentile["50.000000"] / 1000}, nil
}

// writeImage writes an image of ~2:1 data (64 MiB made from seed,
// repeated) and returns how many of its bytes are in 4 KiB blocks that are
// not all zero.
func writeImage(path string, size int64, seed uint64) (int64, error) {
	data := Fill(Mixed, 64<<20, seed)
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	var nonZero int64
	for off := int64(0); off < size; off += int64(len(data)) {
		p := data[:min(int64(len(data)), size-off)]
		if _, err := f.Write(p); err != nil {
			f.Close()
			return 0, err
		}
		for b := 0; b < len(p); b += blockdev.BlockSize {
			if blk := p[b:min(b+blockdev.BlockSize, len(p))]; !blockdev.IsZero(blk) {
				nonZero += int64(len(blk))
			}
		}
	}
	return nonZero, f.Close()
}

func createSparse(path string, size int64) error {
	f, err := blockdev.CreateFile(path, size)
	if err != nil {
		return err
	}
	return f.Close()
}

// timeCmd runs a command and returns how long it took.
func timeCmd(ctx context.Context, name string, args ...string) (time.Duration, error) {
	start := time.Now()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return time.Since(start), nil
}
