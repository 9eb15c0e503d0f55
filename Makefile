# The two commands of the README:
#   make serve   runs a node (no config: single-node cluster, data in ./data, API on 127.0.0.1:8080)
#   make test    runs every test
# Both install missing system packages first (.ci/setup). The build cache goes to
# /var/cache/chat4all/target when that is writable (RocksDB takes ~20 minutes to compile once).

CACHE_DIR := /var/cache/chat4all/target
export CARGO_TARGET_DIR ?= $(shell mkdir -p $(CACHE_DIR) 2>/dev/null && test -w $(CACHE_DIR) && echo $(CACHE_DIR) || echo $(CURDIR)/target)

# RocksDB's C++ goes through ccache (installed by .ci/setup), its cache beside the target dir.
# Every cargo command must see the same CC/CXX, or cargo rebuilds RocksDB: use these targets
# (each runs .ci/setup first, so ccache is there before cargo starts).
export CC := ccache cc
export CXX := ccache c++
export CCACHE_DIR ?= /var/cache/chat4all/ccache

.PHONY: serve test build lint image
serve:
	.ci/setup
	cargo run --release --bin chat4all -- serve $(ARGS)

build:
	.ci/setup
	cargo build --release --bin chat4all

image: build
	docker/build-image.sh $(CARGO_TARGET_DIR)/release/chat4all

lint:
	.ci/setup
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings

# Every test: the workspace's tests, then three short seeded Jepsen-style runs (root: network
# namespaces), each failing on any invalid history.
test:
	.ci/setup
	cargo test --release --workspace
	jepsen-tests/run $(JEPSEN_SHORT)
	jepsen-tests/run $(JEPSEN_SHORT_GROUPS)
	jepsen-tests/run $(JEPSEN_SHORT_CHAT)

# The short runs CI does: kills and partitions every ~5 s for 40 s, 3 nodes, fixed seed; the
# queue workload (idempotent producers, then the drain), consumer groups (members that poll,
# commit and churn), and chat (sends retried by message_id, histories and event streams).
JEPSEN_SHORT := --workload queue --nemesis partition,kill --nodes 3 --time-limit 40 --interval 5 --seed 42
JEPSEN_SHORT_GROUPS := --workload subscribe --nemesis partition,kill --nodes 3 --time-limit 40 --interval 5 --seed 42
JEPSEN_SHORT_CHAT := --workload chat --nemesis partition,kill --nodes 3 --time-limit 40 --interval 5 --seed 42
