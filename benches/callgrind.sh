#!/usr/bin/env bash
# Instructions per committed entry of the comparison's setup (mem+mem, empty commands), counted
# by callgrind over the whole process: the harness's fixed-commit mode (`--commits N`) starts
# the cluster, runs exactly N writes and stops, once per client count. Instruction counts do not
# depend on what else the machine runs, so before/after comparisons hold on a busy machine
# where wall-clock figures swing by ±30 %.
#
#   benches/callgrind.sh                 # raftkit at 256 and 4096 clients, 200,000 commits each
#   benches/callgrind.sh 1 64            # other client counts
#   FRAMEWORK=openraft benches/callgrind.sh 256   # the openraft baseline (builds the feature)
#   COMMITS=50000 benches/callgrind.sh   # fewer commits (start-up weighs more per commit)
#
# Needs valgrind (`apt-get install valgrind`). Under callgrind the process runs ~30× slower, so
# timers fire relatively often: a run whose output shows redirects or a term rise had an election
# and is not comparable (run it again).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "error: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
COMMITS=${COMMITS:-200000}
FRAMEWORK=${FRAMEWORK:-raftkit}
features=()
if [ "$FRAMEWORK" = openraft ]; then features=(--features openraft); fi
cargo build --release -p raftkit-bench "${features[@]}"
bin="${CARGO_TARGET_DIR:-target}/release/raftkit-bench"
[ $# -gt 0 ] || set -- 256 4096
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for clients in "$@"; do
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$clients" "$bin" \
        --commits "$COMMITS" --compare-clients "$clients" --framework "$FRAMEWORK" \
        >"$out/run.$clients" 2>"$out/log.$clients"
    total=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out/log.$clients")
    printf '%s, %s clients: %s instructions for %s commits = %s per commit (%s)\n' \
        "$FRAMEWORK" "$clients" "$total" "$COMMITS" "$((total / COMMITS))" \
        "$(head -1 "$out/run.$clients" | sed 's/^[A-Za-z]*: //')"
done
