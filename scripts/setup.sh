#!/usr/bin/env bash
# Bring silo up on a fresh Debian 12 machine: install what it needs (runsc, debootstrap),
# build it, build the base template if it is missing, then run `silo serve` on
# 127.0.0.1:3000. A second run reuses everything already installed and built.
#
#   scripts/setup.sh                 # set up and serve
#   scripts/setup.sh --no-serve      # set up only
#   scripts/setup.sh -- --listen 0.0.0.0:3000   # flags after -- go to `silo serve`
set -euo pipefail
source "$(dirname "$0")/lib.sh"

serve=1
serve_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-serve) serve=0 ;;
    --) shift; serve_args=("$@"); break ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

need_root
install_deps
build_silo
build_templates
if [ "$serve" = 1 ]; then
  say "starting silo serve"
  exec "$SILO_ROOT/target/release/silo" serve --data-dir "$SILO_DATA_DIR" "${serve_args[@]}"
fi
