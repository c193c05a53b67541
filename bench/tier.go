package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// TierConfig configures Tier.
type TierConfig struct {
	Bin       string // directory holding ferry-ps
	Versitygw string
	Dir       string
	VMs       int   // agents at once (default 4)
	Bytes     int64 // data on each VM's disk (default 256 MiB)
}

// Tier measures ingest through the object store tier against the local
// journal alone, on the same disks in the same run: the same agents'
// initial copies into a ferry-ps that acknowledges after its journal's
// fsync, then into one that also puts every group commit into the bucket
// (versitygw, its own process on the same disk) before acknowledging.
// The ack latency is split into its parts from ferry-ps's own histograms:
// the journal's commit (its fsync) and the shipment, so that what each
// durability rule costs can be read off one run: "fsync and ship before
// the ack" (Ferry's) pays both; "ack after the upload alone" would pay
// the shipment without the commit.
func Tier(ctx context.Context, cfg TierConfig) (*Table, error) {
	if cfg.VMs == 0 {
		cfg.VMs = 4
	}
	if cfg.Bytes == 0 {
		cfg.Bytes = 256 << 20
	}
	dir, err := os.MkdirTemp(cfg.Dir, "tier-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	s3, stop, err := startS3(ctx, cfg.Versitygw, dir, "tier")
	if err != nil {
		return nil, err
	}
	defer stop()
	addr := s3.Endpoint
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte(benchSecret), 0o600); err != nil {
		return nil, err
	}
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte(fmt.Sprintf("%064x", 0x5eed)), 0o600); err != nil {
		return nil, err
	}
	images := make([]string, cfg.VMs)
	nonZero := make([]int64, cfg.VMs)
	for i := range images {
		images[i] = filepath.Join(dir, fmt.Sprintf("vm%d.img", i))
		if nonZero[i], err = writeImage(images[i], cfg.Bytes, uint64(300+i)); err != nil {
			return nil, err
		}
	}
	hists := []string{"ferry_ps_ack_latency_seconds", "ferry_ps_commit_seconds", "ferry_ps_ship_seconds"}
	base := FanInConfig{Bin: cfg.Bin, Dir: dir, VMs: cfg.VMs, Bytes: cfg.Bytes, Histograms: hists}
	local := base
	local.PSArgs = []string{"--key-file", key}
	tiered := base
	tiered.PSArgs = []string{"--key-file", key, "--store", "s3://tier/site", "--s3-endpoint", "http://" + addr,
		"--s3-access-key", "bench", "--s3-secret-key-file", secret}
	lr, err := fanInRun(ctx, local, dir, images, nonZero)
	if err != nil {
		return nil, fmt.Errorf("local journal: %w", err)
	}
	tr, err := fanInRun(ctx, tiered, dir, images, nonZero)
	if err != nil {
		return nil, fmt.Errorf("object store tier: %w", err)
	}
	total := cfg.Bytes * int64(cfg.VMs)
	lm, tm := mbps(total, lr.wall), mbps(total, tr.wall)
	mean := func(r fanInResult, h string) float64 {
		v := r.hist[h]
		if v[1] == 0 {
			return 0
		}
		return v[0] / v[1] * 1000
	}
	t := &Table{
		Title:  fmt.Sprintf("tier: initial copies of %d VMs x %d MiB of ~2:1 data, acknowledged after the journal's fsync, then also after the put to the bucket", cfg.VMs, cfg.Bytes>>20),
		Header: []string{"durability before the ack", "aggregate MB/s", "x local", "mean ack ms", "mean commit (fsync) ms", "mean ship ms", "group commits"},
		Values: map[string]float64{
			"local MB/s": lm, "tier MB/s": tm, "tier / local": tm / lm,
			"local ack ms": mean(lr, hists[0]), "tier ack ms": mean(tr, hists[0]),
			"tier commit ms": mean(tr, hists[1]), "tier ship ms": mean(tr, hists[2]),
		},
	}
	t.Rows = append(t.Rows,
		[]string{"journal fsync", f1(lm), "1.00", f1(mean(lr, hists[0])), f1(mean(lr, hists[1])), "-", fmt.Sprint(lr.hist[hists[1]][1])},
		[]string{"journal fsync + put to the bucket", f1(tm), f2(tm / lm), f1(mean(tr, hists[0])), f1(mean(tr, hists[1])), f1(mean(tr, hists[2])),
			fmt.Sprint(tr.hist[hists[1]][1])})
	t.AddTarget("ingest through the object store tier vs the local journal alone", tm/lm, 0.5, false, "x")
	t.Notes = append(t.Notes,
		"the S3 server is versitygw on the same machine and disk: the shipment's cost here is the object path's own (HTTP, framing, AES-GCM, the gateway's write), not a remote store's network",
		"ack after the upload alone (no local fsync) would save the commit column and keep the ship column; Ferry pays both so that the process server's own journal is durable too (it serves points at once and needs no bucket read after a restart)",
		"each group commit is one segment object per VM, put in parallel for the VMs of one commit")
	return t, nil
}
