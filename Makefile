# Duet's build and test entry points. `make test` is THE test command: on a
# fresh machine of this kind, as root, it installs what the tests need and
# runs every test.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.0.0-dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X github.com/duet-net/duet/internal/version.Version=$(VERSION) \
            -X github.com/duet-net/duet/internal/version.Commit=$(COMMIT)
FUZZTIME ?= 2m

.PHONY: build test deps vet staticcheck unit chaos bench fuzz clean

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/duet ./cmd/duet

test: deps vet staticcheck unit chaos e2e-upstream

deps:
	./hack/install-deps.sh

vet:
	$(GO) vet ./...

staticcheck:
	$(GO) tool staticcheck ./...

unit:
	DUET_TEST_REQUIRE_ROOT=1 $(GO) test -race -count=1 -timeout 60m ./...

# Failures injected into `duet up --servers 3` under load (root); see
# test/chaos. CHAOS_REPEATS, CHAOS_SERVICES, CHAOS_PODS scale it.
chaos:
	DUET_TEST_REQUIRE_ROOT=1 $(GO) test -tags chaos -count=1 -timeout 120m -v ./test/chaos/

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./internal/...

# Runs every fuzz target for FUZZTIME each (go test fuzzes one at a time).
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$t"; \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf bin

# Upstream's referee: Kubernetes' own e2e.test and agnhost, built from the Go
# module k8s.io/kubernetes in the separate module test/upstream (Duet's own
# go.mod uses only its controllers and API validation, not its test tree).
# About 18 minutes cold on 2 cores.
UPSTREAM_DIR := test/upstream

.PHONY: agnhost e2e.test ginkgo e2e-upstream
agnhost:
	cd $(UPSTREAM_DIR) && $(GO) build -o $(CURDIR)/bin/agnhost k8s.io/kubernetes/test/images/agnhost

e2e.test:
	cd $(UPSTREAM_DIR) && $(GO) test -c -o $(CURDIR)/bin/e2e.test k8s.io/kubernetes/test/e2e

ginkgo:
	cd $(UPSTREAM_DIR) && $(GO) build -o $(CURDIR)/bin/ginkgo github.com/onsi/ginkgo/v2/ginkgo

# CoreDNS, built from its Go module in the separate module test/coredns:
# upstream's DNS tests run it in pods, and dnsbench compares it with Duet's
# DNS.
.PHONY: coredns
coredns:
	cd test/coredns && $(GO) build -o $(CURDIR)/bin/coredns .

# Duet's cluster DNS against CoreDNS's kubernetes plugin, side by side on
# one `duet server` (loopback only; about 5 minutes). DNSBENCH_FLAGS passes
# flags (go run ./test/dnsbench -h lists them).
.PHONY: dnsbench
dnsbench: build coredns
	$(GO) run ./test/dnsbench $(DNSBENCH_FLAGS)

# Upstream's dual-stack e2e tests against a fresh `duet up` (root). The Go
# build cache makes the upstream binaries a few minutes warm.
e2e-upstream: build agnhost coredns e2e.test ginkgo
	./hack/e2e-upstream.sh
