#!/usr/bin/env bash
# Set up this machine (idempotent), then run every check and test: formatting, clippy,
# unit tests, and the end-to-end tests that drive the real kernel (they need root; without
# it they print why they skip).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --quiet --all-targets -- -D warnings
echo "== cargo build"
cargo build --quiet -p monitor --bin confgate
export CONFGATE_BIN="$PWD/target/debug/confgate"
echo "== cargo test"
cargo test --quiet -- --test-threads=2
# The benchmark harness in its quick mode, so that it cannot rot: every scenario and mode
# runs (about a minute with a warm release build). Figures go to
# bench/results/latest-quick.json; BENCHMARKS.md is left alone (only a full run rewrites
# it). A missed target does not fail CI (the machine is shared); a harness that no longer
# measures does. (Root, like the rest of this script: bootstrap.sh insists.)
echo "== cargo xtask bench --quick"
cargo xtask bench --quick
