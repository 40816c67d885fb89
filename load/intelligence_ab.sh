#!/usr/bin/env bash
# Batched reserve throughput with the demand intelligence on against off
# (`omnistock serve`'s OMNISTOCK_INTELLIGENCE=on|off, docs/intelligence.md), alternating on
# / off for each round on the same binary: load/ab.sh with the two environments. Takes
# ab.sh's options (--rounds, --duration, --warmup, --bin-dir, --flags; env ROUNDS,
# DURATION, WARMUP, BIN_DIR, RUN_FLAGS). Wall clock on a shared machine is noisy: read the
# per-round pairs, not one number.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/ab.sh" --a-name on --a-env OMNISTOCK_INTELLIGENCE=on \
  --b-name off --b-env OMNISTOCK_INTELLIGENCE=off "$@"
