# Everyday commands. `make dev` and `make test` work on a fresh machine (they install what
# they need first); see README.md.
.PHONY: setup dev build test unit e2e test-etcd fmt clippy bench fuzz chaos chaos-soak

CARGO ?= cargo

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release -p kedge

# A one-node cluster (server + local agent) with embedded defaults.
dev: build
	./target/release/kedge dev --listen 127.0.0.1:6443

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

# Everything CI runs: formatting, lints, unit, in-process and end-to-end tests.
test: setup fmt clippy
	$(CARGO) test --doc
	$(CARGO) test --lib --bins --tests

unit: setup
	$(CARGO) test --lib --bins

e2e: setup
	$(CARGO) test -p kedge --test e2e

# The whole end-to-end suite with every cluster on an etcd of its own (Debian's etcd-server)
# instead of the embedded store. CI runs the etcd tests (`etcd::`) on every change.
test-etcd: setup
	KEDGE_E2E_DATASTORE=etcd $(CARGO) test -p kedge --test e2e

# The long fuzz run (README "Fuzzing"): every target for FUZZ_SECS seconds after replaying
# fuzz/corpus. `make test` runs the same targets for 2 s each. Dev profile on purpose:
# overflow checks and debug assertions stay on, and the test binaries are already built.
FUZZ_SECS ?= 600
FUZZ_THREADS ?= 1
fuzz: setup
	KEDGE_FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test -p kedge-core --test fuzz -- --nocapture --test-threads=$(FUZZ_THREADS)
	KEDGE_FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test -p kedge-registry --test fuzz -- --nocapture --test-threads=$(FUZZ_THREADS)
	KEDGE_FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test -p kedge-tunnel --test fuzz -- --nocapture --test-threads=$(FUZZ_THREADS)
	KEDGE_FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test -p kedge-api --lib fuzz:: -- --nocapture --test-threads=$(FUZZ_THREADS)

# The long chaos campaigns (README "Chaos campaigns"); `make test` runs their short forms.
# About two hours on a 2-core machine, most of it the 1,000 server kills and the tunnel's
# 10-minute faults.
chaos: setup
	KEDGE_CHAOS_CYCLES=1000 KEDGE_CHAOS_OPS=100000 KEDGE_CHAOS_ROUNDS=100 KEDGE_CHAOS_WATCHERS=100 \
	KEDGE_CHAOS_AGENT_CYCLES=100 KEDGE_CHAOS_FAULT_SECS=120 KEDGE_CHAOS_CUT_SECS=600 \
	KEDGE_CHAOS_REBIND_EVERY=30 KEDGE_CHAOS_REBIND_SECS=600 KEDGE_CHAOS_PLUGIN_SECS=60 \
	KEDGE_CHAOS_PLUGIN_WRITERS=50 KEDGE_CHAOS_PLUGIN_WATCHERS=100 KEDGE_CHAOS_PLUGIN_PACE_MS=500 \
	KEDGE_CHAOS_PLUGIN_DEADLINE_MS=2000 \
	$(CARGO) test -p kedge --test chaos -- --nocapture --test-threads=1 --skip soak::

# The hour-long soak: 1,000 simulated agents and 30,000 pods on one server. Release build:
# the fleet lives in the test process and, unoptimised, runs out of CPU on 2 cores.
chaos-soak: setup
	KEDGE_CHAOS_SOAK_AGENTS=1000 KEDGE_CHAOS_SOAK_PODS=30000 KEDGE_CHAOS_SOAK_SECS=3600 \
	$(CARGO) test --release -p kedge --test chaos -- --nocapture soak::

bench: setup
	$(CARGO) bench -p kedge --bench skeleton
	$(CARGO) bench -p kedge --bench images
	$(CARGO) bench -p kedge --bench api
	$(CARGO) bench -p kedge --bench tunnel
	$(CARGO) bench -p kedge --bench portforward
	$(CARGO) bench -p kedge --bench scheduler
	$(CARGO) bench -p kedge-net --bench proxy
	$(CARGO) bench -p kedge-net --bench dns
	$(CARGO) bench -p kedge --bench plugins
	$(CARGO) bench -p kedge --bench endpoints
	$(CARGO) bench -p kedge --bench memory
	$(CARGO) bench -p kedge --bench probes
	$(CARGO) bench -p kedge --bench servicedns
	$(CARGO) bench -p kedge --bench crd
	$(CARGO) bench -p kedge --bench scrape
