GO ?= go
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
GOBIN ?= $(shell $(GO) env GOPATH)/bin
# --version of every binary: the release (git describe) and the commit.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# make package: Debian packages of the servers and of the agent, in dist/.
NFPM_VERSION := v2.45.2
PKG_VERSION ?= 0.1.0+git$(shell git rev-parse --short HEAD 2>/dev/null || echo 0)
LDFLAGS := -X github.com/ferrydr/ferry/pkg/cli.version=$(VERSION) -X github.com/ferrydr/ferry/pkg/cli.commit=$(COMMIT)

.PHONY: all build package test test-race fmt vet bench fuzz fuzz-short faults proto proto-tools drill drill-real demo clean

all: fmt vet build test

build:
	$(GO) build ./...
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ ./agent/cmd/ferry-agent ./processserver/cmd/ferry-ps ./processserver/cmd/ferryctl ./sim/cmd/ferry-drill ./mastertarget/cmd/ferry-mt ./bench/cmd/ferry-bench

package: build
	$(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)
	mkdir -p dist
	FERRY_PKG_VERSION=$(PKG_VERSION) $(GOBIN)/nfpm package --config deploy/nfpm/ferry-server.yaml --packager deb --target dist/
	FERRY_PKG_VERSION=$(PKG_VERSION) $(GOBIN)/nfpm package --config deploy/nfpm/ferry-agent.yaml --packager deb --target dist/

test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m ./...

# The real-machine drill (sim/lab) runs once, in test: under the race
# detector its guests would only boot slower.
test-race:
	$(GO) test -count=1 -timeout 30m -race ./pkg/... ./internal/... ./agent/... ./processserver/... ./mastertarget/... $$($(GO) list ./sim/... | grep -v /sim/lab)

fmt:
	gofmt -l -w $$(git ls-files '*.go' | grep -v '\.pb\.go$$')

vet:
	$(GO) vet ./...

# bench runs the harness (each figure beside its baseline, same run; one
# "target:" line per goal) and keeps its report and charts in bench-out/:
# report.json (every table, figure and target), rpo.svg (RPO over time),
# throughput.svg (throughput by data kind); then the Go benchmarks of the
# ingest path and of test-failover start.
bench: build
	mkdir -p bench-out
	bin/ferry-bench --json bench-out/report.json --charts bench-out all
	$(GO) test -run '^$$' -bench . -benchtime 400x -count 3 ./pkg/ingest/
	$(GO) test -run '^$$' -bench TestFailoverStart -benchtime 20x ./sim/

# drill runs the failover drill against the simulator (real agent and
# process server, simulated machines and recovery site) and prints its report.
drill:
	$(GO) run ./sim/cmd/ferry-drill $(DRILL_FLAGS)

# drill-real runs the drill on real guests under libvirt (root, libvirtd
# running; .ci/run shows what to install and start).
drill-real:
	$(GO) run ./sim/cmd/ferry-drill --compute libvirt $(DRILL_FLAGS)

FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzBatch -fuzztime $(or $(FUZZ_BATCH),$(FUZZTIME)) ./pkg/ingest/
	$(GO) test -run '^$$' -fuzz 'FuzzDecode$$' -fuzztime $(or $(FUZZ_DECODE),$(FUZZTIME)) ./pkg/journal/
	$(GO) test -run '^$$' -fuzz FuzzDecodeSegment -fuzztime $(or $(FUZZ_SEGMENT),$(FUZZTIME)) ./pkg/tier/
	$(GO) test -run '^$$' -fuzz FuzzOpen -fuzztime $(or $(FUZZ_OPEN),$(FUZZTIME)) ./pkg/wire/

# fuzz-short is the fuzz run CI does: about 15 s of each fuzzer here,
# counted in executions rather than time, because Go 1.26's fuzzer can
# fail a run at its -fuzztime deadline with "context deadline exceeded"
# on a loaded machine (golang/go#75804, fixed in Go 1.27).
fuzz-short:
	$(MAKE) fuzz FUZZ_BATCH=100000x FUZZ_DECODE=300000x FUZZ_SEGMENT=200000x FUZZ_OPEN=100000x

# faults runs the fault tests at their full counts (make test runs reduced
# ones) and prints their figures.
faults:
	FERRY_FAULTS=full $(GO) test -count=1 -timeout 60m -run 'TestBitFlips|TestKill|TestJournalStorageError|TestTrimPowerLoss|TestTrimStorageErrors|TestPowerLoss' -v ./sim/ ./pkg/journal/ >faults.log 2>&1; \
		rc=$$?; grep -E '^(--- |ok|FAIL)|(fault|kill|powerloss)_test.go' faults.log; exit $$rc

# demo protects a generated disk image with ferry-ps and ferry-agent on
# loopback, changes it, exports the newest recovery point with ferryctl and
# compares it with the image.
DEMO := $(CURDIR)/.demo
demo: build
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	@truncate -s 256M $(DEMO)/disk.img
	@dd if=/dev/urandom of=$(DEMO)/disk.img bs=1M count=16 seek=32 conv=notrunc status=none
	@echo "== a CA for the demo, an operator certificate for ferryctl"
	@bin/ferry-ps ca init --ca $(DEMO)/ca
	@bin/ferry-ps ca issue --ca $(DEMO)/ca --role operator --name demo --out $(DEMO)/operator
	@echo "== ferry-ps on 127.0.0.1:17400 (TLS 1.3, client certificates; metrics on :17401), ferry-agent enrolled with a token, protecting a 256 MiB image"
	@bin/ferry-ps serve --ca $(DEMO)/ca --data $(DEMO)/ps --listen 127.0.0.1:17400 --metrics 127.0.0.1:17401 2>$(DEMO)/ps.log & echo $$! > $(DEMO)/ps.pid
	@sleep 0.5
	@bin/ferry-ps enroll --ca $(DEMO)/ca --vm demo-vm > $(DEMO)/token
	@bin/ferry-agent run --ps 127.0.0.1:17400 --vm demo-vm --disk os=$(DEMO)/disk.img --state $(DEMO)/agent \
		--token-file $(DEMO)/token \
		--scan-interval 500ms --crash-interval 2s 2>$(DEMO)/agent.log & echo $$! > $(DEMO)/agent.pid
	@sleep 2
	@echo "== the VM writes 40 MiB more while protected"
	@dd if=/dev/urandom of=$(DEMO)/disk.img bs=1M count=8 seek=100 conv=notrunc status=none
	@yes "ferry keeps every changed block of this disk at the recovery site" | head -c 32M | dd of=$(DEMO)/disk.img bs=1M seek=120 conv=notrunc status=none iflag=fullblock
	@sleep 3
	@bin/ferryctl --ps 127.0.0.1:17400 --tls-dir $(DEMO)/operator vms
	@bin/ferryctl --ps 127.0.0.1:17400 --tls-dir $(DEMO)/operator points --vm demo-vm
	@bin/ferryctl --ps 127.0.0.1:17400 --tls-dir $(DEMO)/operator verify --vm demo-vm
	@bin/ferryctl --ps 127.0.0.1:17400 --tls-dir $(DEMO)/operator export --vm demo-vm --disk os --out $(DEMO)/restored.img
	@kill $$(cat $(DEMO)/agent.pid) $$(cat $(DEMO)/ps.pid); sleep 1
	@cmp $(DEMO)/disk.img $(DEMO)/restored.img && echo "== restored image equals the protected disk byte for byte"

proto-tools:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

proto: proto-tools
	PATH="$(GOBIN):$$PATH" protoc -I proto \
		--go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		proto/ferry/v1/ferry.proto

clean:
	rm -rf bin .demo bench-out dist
