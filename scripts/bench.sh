#!/usr/bin/env bash
# Benchmark silo as a user meets it: build (like setup.sh), then bench/bench.py starts its
# own `silo serve` and measures create and command latency through the official E2B SDK,
# beside raw `runsc run` of the same rootfs. Results: bench/results/<date>-<host>/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root
install_deps
build_silo
build_templates
cd "$SILO_ROOT"
if [ ! -x tests/.venv/bin/python ]; then
  python3 -m venv tests/.venv
fi
tests/.venv/bin/pip install -q -r tests/requirements.txt
SILO_BIN="$SILO_ROOT/target/release/silo" \
SILO_AGENT_BIN="$SILO_ROOT/target/release/silo-agent" \
SILO_TEST_TEMPLATE_DIR="$SILO_DATA_DIR/templates" \
  tests/.venv/bin/python bench/bench.py
