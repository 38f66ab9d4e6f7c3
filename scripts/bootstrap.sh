#!/usr/bin/env bash
# Installs everything confgate needs to build and test on a fresh Debian 12 x86_64 host.
# Idempotent: every step checks whether it is already done and skips it if so.
# Toolchain facts (versions that build on rustc 1.95) come from ../shared/ENVIRONMENT.md.
set -euo pipefail

log() { printf '[bootstrap] %s\n' "$*"; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: must run as root (loads eBPF, installs packages)" >&2
        exit 1
    fi
}
need_root

export PATH="$HOME/.cargo/bin:$PATH"
CARGO_FUZZ_VERSION=0.13.2
CARGO_DEB_VERSION=3.8.0

# 1. Debian packages: LLVM 22 for bpf-linker, protoc for the gRPC build, tools the e2e tests drive
# (logrotate: tests/tests/reload.rs rotates the events file with it).
PKGS=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev libxml2-dev protobuf-compiler cron python3 sudo gcc liburing-dev logrotate)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
else
    log "Debian packages present"
fi

# 2. Nightly rust-src: aya-build compiles the eBPF crate with -Z build-std=core.
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    log "adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly
else
    log "nightly rust-src present"
fi
# Nightly clippy: scripts/test.sh checks the eBPF crate with it (same target as aya-build).
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^clippy'; then
    log "adding clippy to nightly"
    rustup component add clippy --toolchain nightly
else
    log "nightly clippy present"
fi

# 3. bpf-linker built against the packaged LLVM 22 (the default feature wants LLVM 23).
if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
    log "building bpf-linker 0.13.0 against LLVM 22 (takes a few minutes)"
    LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 \
        --no-default-features --features llvm-22 --locked 2>&1 | tail -n 3
else
    log "bpf-linker present"
fi

# 4. cargo-fuzz for the fuzz targets in fuzz/ (scripts/test.sh runs each briefly).
if ! cargo fuzz --version 2>/dev/null | grep -q "^cargo-fuzz $CARGO_FUZZ_VERSION\$"; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION (takes a few minutes)"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked 2>&1 | tail -n 3
else
    log "cargo-fuzz present"
fi

# 5. The web approval page's browser test (tests/tests/approver_web.rs): headless Chromium
# with its WebDriver, node, and the local OpenID provider's npm packages (tests/oidc, from
# its package-lock.json; node_modules is not committed).
WEB_PKGS=(chromium chromium-driver nodejs npm curl)
missing=()
for p in "${WEB_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    # node/npm may come from elsewhere (a newer nodejs); install only what is absent.
    want=()
    for p in "${missing[@]}"; do
        case "$p" in
            nodejs) command -v node >/dev/null 2>&1 || want+=("$p") ;;
            npm) command -v npm >/dev/null 2>&1 || want+=("$p") ;;
            *) want+=("$p") ;;
        esac
    done
    if [ "${#want[@]}" -gt 0 ]; then
        log "installing Debian packages for the browser test: ${want[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y --no-install-recommends "${want[@]}" >/dev/null 2>&1; then
            apt-get update >/dev/null
            apt-get install -y --no-install-recommends "${want[@]}" >/dev/null
        fi
    fi
fi
OIDC_DIR="$(cd "$(dirname "$0")/.." && pwd)/tests/oidc"
if [ ! -d "$OIDC_DIR/node_modules/oidc-provider" ] \
    || ! cmp -s "$OIDC_DIR/package-lock.json" "$OIDC_DIR/node_modules/.package-lock.json.installed"; then
    log "installing the test OpenID provider's npm packages (tests/oidc)"
    (cd "$OIDC_DIR" && npm ci --no-audit --no-fund >/dev/null \
        && cp package-lock.json node_modules/.package-lock.json.installed)
else
    log "test OpenID provider packages present"
fi

# 6. The Debian package (`cargo xtask deb`, tests/tests/package.rs): cargo-deb, and man-db
# and systemd for `man -w` and `systemd-analyze verify` of the installed package.
DEB_PKGS=(man-db systemd gzip binutils)
missing=()
for p in "${DEB_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi
# Built with light optimisation (the tool packages one file set per test run; a full
# release build of it took minutes of CI time).
if ! cargo deb --version >/dev/null 2>&1; then
    log "installing cargo-deb (takes a few minutes)"
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false \
        CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=0 \
        cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION" 2>&1 | tail -n 3
else
    log "cargo-deb present"
fi

# 7. Kernel filesystems the daemon uses (the daemon mounts tracefs itself too).
if [ -z "$(ls -A /sys/kernel/tracing 2>/dev/null)" ]; then
    log "mounting tracefs"
    mount -t tracefs none /sys/kernel/tracing
fi
# 8. PostgreSQL for the approval service's PostgreSQL backend (its unit tests, tests/tests/
# fleet_pg.rs, the fleet benchmark): only the binaries. Each test runs its own throwaway
# cluster (initdb in a temporary directory, as the postgres user); no system cluster is
# created, and none is used.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    log "installing PostgreSQL (binaries only, no system cluster)"
    mkdir -p /etc/postgresql-common
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Our createcluster.conf is kept (confold) when the package brings its own.
    PG_OPTS=(-y --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    if ! apt-get install "${PG_OPTS[@]}" postgresql >/dev/null 2>&1; then
        apt-get update >/dev/null
        apt-get install "${PG_OPTS[@]}" postgresql >/dev/null
    fi
else
    log "PostgreSQL present"
fi
# 9. nats-server for `[output.nats]` (tests/tests/fleet_nats.rs): only the binary. Each test
# runs its own throwaway server (`nats-server -js -a 127.0.0.1 -p <free port> -sd <tempdir>`);
# the packaged system service is not used (stopped and disabled where systemd runs).
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    log "installing nats-server (binary only, the system service is not used)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends nats-server >/dev/null 2>&1; then
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends nats-server >/dev/null
    fi
    if [ -d /run/systemd/system ]; then
        systemctl disable --now nats-server >/dev/null 2>&1 || true
    fi
else
    log "nats-server present"
fi
log "done"
