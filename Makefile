GO ?= go
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
GOBIN ?= $(shell $(GO) env GOPATH)/bin

.PHONY: all build test test-race fmt vet bench proto proto-tools demo drill clean

all: fmt vet build test

build:
	$(GO) build ./...
	$(GO) build -o bin/ ./agent/cmd/ferry-agent ./processserver/cmd/ferry-ps ./processserver/cmd/ferryctl

test:
	$(GO) test -count=1 ./...

test-race:
	$(GO) test -count=1 -race ./pkg/... ./agent/... ./processserver/...

fmt:
	gofmt -l -w $$(git ls-files '*.go' | grep -v '\.pb\.go$$')

vet:
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2x ./processserver/ ./pkg/journal/

demo: build
	./scripts/demo.sh

proto-tools:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

proto: proto-tools
	PATH="$(GOBIN):$$PATH" protoc -I proto \
		--go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		proto/ferry/v1/ferry.proto

clean:
	rm -rf bin
