#!/usr/bin/env bash
# Runs the scenarios docs/performance.md reports against one server, writing one JSON report
# and the SVG histograms per scenario into OUT.
#
#   loadtests/bench.sh URL SERVER_PID OUT full|synapse [scenario...]
#
# `full` uses the sizes of docs/performance.md; `synapse` the smaller ones a Synapse run
# finishes in reasonable time (rates are per second either way). With scenario names, only
# those run. LOADTEST_REGISTRATION_TOKEN registers through a token; without it, open
# registration. HARNESS overrides the harness binary.
set -euo pipefail
url="$1" pid="$2" out="$3" sizes="$4"
shift 4
harness="${HARNESS:-${CARGO_TARGET_DIR:-target}/release/tuwunel-loadtest}"
mkdir -p "$out"
world="$out/world"
common=(--url "$url" --world-dir "$world" --server-pid "$pid" --svg-dir "$out/svg")

declare -A full=(
    [create-rooms]="create-rooms --count 500 --concurrency 16"
    [join]="join --users 500 --rooms 500"
    [send]="send --messages 20000"
    [fanout]="fanout --members 100 --rate 10 --messages 300"
    [fanout-1000]="fanout --rooms 1000 --members 3 --users 300 --rate 50 --messages 3000"
    [initial-sync]="initial-sync --rooms 500 --history 20"
    [media]="media --count 50 --size 1048576"
    [many-rooms]="many-rooms --rooms 10000"
    [idle-polls]="idle-polls --polls 10000 --users 200 --hold-seconds 30"
)
declare -A synapse=(
    [create-rooms]="create-rooms --count 100 --concurrency 16"
    [join]="join --users 100 --rooms 100"
    [send]="send --rooms 100 --users 50 --messages 1000"
    [fanout]="fanout --members 100 --rate 10 --messages 100"
    [initial-sync]="initial-sync --rooms 500 --history 10"
    [media]="media --count 20 --size 1048576"
)
order=(create-rooms join send fanout fanout-1000 initial-sync media many-rooms idle-polls)
[ "$#" -gt 0 ] && order=("$@")
for scenario in "${order[@]}"; do
    if [ "$sizes" = full ]; then args="${full[$scenario]:-}"; else args="${synapse[$scenario]:-}"; fi
    [ -n "$args" ] || continue
    echo "== $scenario: $args" >&2
    # shellcheck disable=SC2086
    "$harness" "${common[@]}" --report "$out/$scenario.json" $args || echo "!! $scenario exited $?" >&2
done
