#!/usr/bin/env bash
# What feed subscribers cost reservations (issue 14's "100 subscribers under 10%"):
# load/ab.sh with `--subscribers N --subscriber-prefixes SKU-0000,...,SKU-0009` (each
# subscriber follows a tenth of the SKUs, so each change reaches N / 10 of them) against
# no subscribers, alternating, a fresh server per run. Env SUBSCRIBERS (default 100);
# takes ab.sh's options (--rounds, --duration, --warmup, --bin-dir, --flags). The
# subscribers run in the load generator, on the same machine as the server.
set -euo pipefail
N=${SUBSCRIBERS:-100}
PREFIXES=SKU-0000,SKU-0001,SKU-0002,SKU-0003,SKU-0004,SKU-0005,SKU-0006,SKU-0007,SKU-0008,SKU-0009
exec "$(dirname "${BASH_SOURCE[0]}")/ab.sh" \
  --a-name "$N subscribers" --a-load "--subscribers $N --subscriber-prefixes $PREFIXES" \
  --b-name "no subscribers" "$@"
