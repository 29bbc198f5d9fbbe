# Shared steps of scripts/setup.sh and scripts/test.sh. Sourced, not run.
# Each step is idempotent: a second run reuses what the first installed or built.

SILO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SILO_DATA_DIR="${SILO_DATA_DIR:-/var/lib/silo}"
TARGET_TRIPLE="x86_64-unknown-linux-gnu"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: silo manages gVisor sandboxes, network namespaces and mounts: run this as root (sudo $0)" >&2
    exit 1
  fi
}

# The Debian mirror this machine already uses, read from its own apt sources, so that
# no host name is written into silo.
debian_mirror() {
  local uri
  uri=$(awk '
    /^Types:/ { deb = ($0 ~ /deb( |$)/) }
    /^URIs:/ { uris = $2 }
    /^Suites:/ { if (deb && $0 ~ /[ \t]bookworm([ \t]|$)/) { print uris; exit } }
  ' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $3 == "bookworm" { print ($2 ~ /^\[/ ? $3 : $2); exit }' /etc/apt/sources.list)
  fi
  if [ -z "$uri" ]; then
    echo "error: no apt source for Debian bookworm found in /etc/apt; silo needs a Debian 12 host" >&2
    exit 1
  fi
  printf '%s\n' "$uri"
}

# (Not `runsc --version | grep -q`: under pipefail, grep's early exit can fail the pipe.)
runsc_ok() {
  local version
  version=$(runsc --version 2>/dev/null) || return 1
  [[ "$version" == *"0.0~2024"* ]]
}

install_deps() {
  local missing=()
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
  command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
  command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
  # The dashboard (web/) is built with npm into the binary (crates/silo-api/build.rs).
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  if runsc_ok && [ ${#missing[@]} -eq 0 ]; then
    return
  fi
  say "installing system packages (runsc from bookworm-backports, ${missing[*]:-})"
  export DEBIAN_FRONTEND=noninteractive
  if ! runsc_ok; then
    local mirror
    mirror=$(debian_mirror)
    cat > /etc/apt/sources.list.d/silo-bookworm-backports.sources <<SRC
Types: deb
URIs: ${mirror}
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  apt-get update -q
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -q "${missing[@]}"
  fi
  if ! runsc_ok; then
    apt-get install -y -q -t bookworm-backports runsc
  fi
}

# What only the tests use: a local registry and skopeo (template builds FROM a registry),
# and Chromium for the dashboard's browser test.
install_test_deps() {
  local missing=()
  command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
  command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing test packages (${missing[*]})"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
}

# silo (release) and the static silo-agent, side by side in target/release.
build_silo() {
  say "building silo (release)"
  cd "$SILO_ROOT"
  cargo build --release --locked -p silo
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$TARGET_TRIPLE" -p silo-agent
  install -m 0755 "target/$TARGET_TRIPLE/release/silo-agent" target/release/silo-agent
}

build_templates() {
  say "building the base and code-interpreter templates (reused when already built)"
  "$SILO_ROOT/target/release/silo" template build -n base --data-dir "$SILO_DATA_DIR"
  "$SILO_ROOT/target/release/silo" template build -n code-interpreter --data-dir "$SILO_DATA_DIR"
}
