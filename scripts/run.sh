#!/usr/bin/env bash
# Set up this machine (idempotent) and run the confgate daemon in the foreground with the
# configuration at /etc/confgate/config.toml, or the built-in defaults when that file is
# absent (watch /etc, cron spools, systemd unit dirs and project .env/config files; store
# in /var/lib/confgate/confgate.redb; events in /var/log/confgate/events.ndjson).
# Extra arguments go to `confgate daemon` (e.g. --config PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet -p monitor --bins
# The session helper `confgate run` execs: setuid root, so unprivileged users' sessions
# can be confined (root's work without the bit).
chown root:root ./target/release/confgate-confine
chmod 4755 ./target/release/confgate-confine
exec ./target/release/confgate "$@" daemon
