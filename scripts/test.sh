#!/usr/bin/env bash
# Run silo's whole test suite: what setup.sh installs and builds, then the Rust tests
# (unit and integration, in release so dependencies are built once), then the
# end-to-end suites with the official E2B SDKs (Python, and JS) against real
# `silo serve` processes the tests start and stop themselves.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root
install_deps
install_test_deps
build_silo
build_templates
cd "$SILO_ROOT"

export SILO_BIN="$SILO_ROOT/target/release/silo"
export SILO_AGENT_BIN="$SILO_ROOT/target/release/silo-agent"
export SILO_TEST_TEMPLATE_DIR="$SILO_DATA_DIR/templates"

say "cargo test"
cargo test --release --locked --workspace

say "runtime tests against real runsc (20 start/destroy cycles, leak checks)"
base_rootfs=$(ls -td "$SILO_TEST_TEMPLATE_DIR"/base/*/rootfs | head -n 1)
agent_dir=$(mktemp -d)
trap 'rm -rf "$agent_dir"' EXIT
install -m 0755 "$SILO_AGENT_BIN" "$agent_dir/silo-agent"
SILO_TEST_ROOTFS="$base_rootfs" SILO_TEST_AGENT_DIR="$agent_dir" \
  cargo test --release --locked -p silo-node --test runsc_lifecycle -- --ignored --test-threads=1

say "python end-to-end tests (official e2b SDK)"
if [ ! -x tests/.venv/bin/pytest ]; then
  python3 -m venv tests/.venv
fi
tests/.venv/bin/pip install -q -r tests/requirements.txt
if [ ! -x tests/.venv-openapi/bin/schemathesis ]; then
  python3 -m venv tests/.venv-openapi
fi
tests/.venv-openapi/bin/pip install -q -r tests/requirements-openapi.txt
tests/.venv/bin/pytest tests/e2e -q -p no:cacheprovider

say "code interpreter tests (official e2b-code-interpreter SDK, code-interpreter template)"
tests/.venv/bin/pytest tests/interpreter -q -p no:cacheprovider
