#!/usr/bin/env bash
# Thread scaling of slope's decode floor and one epoch of each algorithm, on a machine with many
# cores. Medians of REPEATS whole-process wall times, page cache warm.
#   benches/scaling.sh DATA_DIR [THREADS...]     e.g. benches/scaling.sh /tmp/m 1 2 4 8 16
# DATA_DIR is made by `slope generate` when it does not exist yet (10M rows, 64 features).
set -euo pipefail
SLOPE=${SLOPE:-target/release/slope}
DATA=${1:?usage: scaling.sh DATA_DIR [THREADS...]}
shift
THREADS=("${@:-1 2}")
REPEATS=${REPEATS:-3}
ROWS=${ROWS:-10000000}
SHARDS=${SHARDS:-64}

[[ -f $DATA/truth.json ]] || "$SLOPE" -q generate --rows "$ROWS" --features 64 --shards "$SHARDS" --seed 7 --out "$DATA"
cat "$DATA"/train/*.parquet >/dev/null

seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-8s %-10s %10s %12s\n' threads run seconds rows_per_s
for t in ${THREADS[@]}; do
  for run in scan minibatch batch normal sgd; do
    case $run in
      scan) cmd=("$SLOPE" scan "$DATA/train" --target y --threads "$t") ;;
      *) cmd=("$SLOPE" -q train "$DATA/train" --target y --threads "$t" --algo "$run" --epochs 1 \
              --tol 0 --batch-size 1024 --model "$DATA/scaling-model.json") ;;
    esac
    s=$(for _ in $(seq "$REPEATS"); do seconds "${cmd[@]}"; done | median)
    printf '%-8s %-10s %10.3f %12.0f\n' "$t" "$run" "$s" "$(awk -v r="$ROWS" -v s="$s" 'BEGIN {print r / s}')"
  done
done
