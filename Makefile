# blixard — build, test and verification entry points.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)

PROTOC_GEN_GO_VERSION := v1.36.12
BIN := $(CURDIR)/.bin
PROTO_DIR := proto/blixardpb
GO_TEST_FLAGS ?= -race -count=1 -timeout 30m

.PHONY: all build test verify proto proto-check bench deps guest demo demo-docker demo-stop clean

all: build

## deps: install what a fresh Debian machine lacks (idempotent).
deps:
	@./.ci/deps

## guest: the test guest (Debian kernel + busybox initramfs) in build/guest.
guest:
	./scripts/guest.sh

## build: the blixard binary in bin/.
build:
	go build -o bin/blixard ./cmd/blixard

## test: every unit, scenario and multi-process test (race detector on).
test: deps
	go test $(GO_TEST_FLAGS) ./...

## bench: every benchmark suite side by side (blixard vs raw dragonboat, etcd and qemu by hand),
## tables into docs/benchmarks.md (see bench-suites below; bench-go runs the Go benchmarks).
bench: bench-suites

$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

## proto: regenerate the Go code from the .proto files.
proto: $(BIN)/protoc-gen-go
	cd $(PROTO_DIR) && protoc --plugin=protoc-gen-go=$(BIN)/protoc-gen-go \
		--go_out=. --go_opt=paths=source_relative *.proto

## proto-check: fail when the committed generated code is stale.
proto-check: $(BIN)/protoc-gen-go
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	cd $(PROTO_DIR) && protoc --plugin=protoc-gen-go=$(BIN)/protoc-gen-go \
		--go_out=$$tmp --go_opt=paths=source_relative *.proto && \
	for f in $$tmp/*.pb.go; do \
		diff -u $$(basename $$f) $$f >/dev/null || { echo "stale generated code: $(PROTO_DIR)/$$(basename $$f) (run make proto)"; exit 1; }; \
	done

## verify: generated code fresh, gofmt clean, go vet clean, go.mod tidy.
verify: proto-check
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	go vet -tags e2e ./e2e/
	go vet -tags simbugs ./sim/ ./consensus/ ./actors/
	@go mod tidy -diff >/dev/null || { echo "go.mod/go.sum not tidy (run go mod tidy)"; go mod tidy -diff; exit 1; }
	@echo verify: ok

## demo: a local 3-node cluster in its own network namespace booting real microVMs; it shows a
## failover and leaves the cluster running (scripts/demo.sh installs qemu, iptables and the guest).
demo: build
	./scripts/demo.sh

## demo-docker: the demo on three Docker hosts with systemd as PID 1 and the packaged unit.
demo-docker:
	./scripts/demo-docker.sh

## demo-stop: stop what `make demo` or `make demo-docker` left running.
demo-stop:
	./scripts/demo.sh --clean
	./scripts/demo-docker.sh --clean

clean:
	rm -rf bin .bin build

## sim: the planted-bug test that proves each checker can fail (sim-planted), then the
## simulation harness on a fixed set of seeds (sim-seeds; about 3 minutes on 2 cores).
## Failing seeds write sim-reports/. SIM_FLAGS adds flags.
SIM_SEEDS ?= 12
SIM_FLAGS ?=
.PHONY: sim sim-planted sim-seeds soak
sim: sim-planted sim-seeds

sim-planted:
	go test -tags simbugs -count=1 -run 'TestPlantedBugsAreCaught' ./sim/

sim-seeds: build
	./bin/blixard sim --seed 1 --runs $(SIM_SEEDS) --nodes 5 --clients 6 --ops 300 --faults all \
		--check-leaks --report-dir sim-reports $(SIM_FLAGS)

## soak: many more seeds (SOAK_RUNS, from SOAK_SEED); logs to SOAK_LOG.
SOAK_RUNS ?= 1000
SOAK_SEED ?= 100000
SOAK_LOG ?= /tmp/blixard-soak.log
soak: build
	./bin/blixard sim --seed $(SOAK_SEED) --runs $(SOAK_RUNS) --nodes 5 --clients 6 --ops 300 --faults all \
		--report-dir sim-reports $(SIM_FLAGS) 2>&1 | tee $(SOAK_LOG)

## e2e: the multi-host acceptance suite: 3 Docker hosts with systemd each, real microVMs (needs Docker and root).
E2E_FLAGS ?= -count=1 -timeout 40m -v
.PHONY: e2e
e2e: deps
	go test -tags e2e $(E2E_FLAGS) ./e2e/

## bench-deps: what the benchmark suites need: Debian's etcd-server and
## etcd-client (the etcd baseline), qemu and the test guest (boot suite).
bench-deps:
	@sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; need=(); \
	command -v etcd >/dev/null || need+=(etcd-server); \
	command -v etcdctl >/dev/null || need+=(etcd-client); \
	command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86); \
	if [ $${#need[@]} -gt 0 ]; then \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends "$${need[@]}" >/dev/null; \
	fi
	./scripts/guest.sh

## bench-suites: every benchmark suite in full mode, side by side with raw
## dragonboat, etcd and qemu by hand; tables into docs/benchmarks.md.
bench-suites: bench-deps build
	bin/blixard bench --write docs/benchmarks.md

## bench-quick: the suites in quick mode (what CI runs; writes nothing).
bench-quick: build
	bin/blixard bench --quick

## bench-go: the Go benchmarks (numbers, never assertions).
bench-go:
	go test -run '^$$' -bench . -benchmem ./...

.PHONY: bench-deps bench-suites bench-quick bench-go
