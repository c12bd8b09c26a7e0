#!/usr/bin/env bash
# slope beside the tools users would otherwise pick, on the same shards and machine, in one run.
# Uses the peer harness in ../shared/bench (see its README for the Python set-up):
#   benches/peers.sh [DATASET]        DATASET under $PEERS_ROOT/data, default M (10M x 64)
# slope's runs enter run_peers.py as extra configurations, so its holdout MSE and weight error are
# computed exactly as every peer's. Results: $PEERS_ROOT/results/slope-DATASET/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/bench}
PEERS_ROOT=${PEERS_ROOT:-$HOME/peers}
PY=${PY:-$PEERS_ROOT/venv/bin/python}
DATASET=${1:-M}
DATA=$PEERS_ROOT/data/$DATASET
SLOPE=$(realpath target/release/slope)
ONLY=${ONLY:-decode-pa-table,sk-scaled-1,vw-convert,vw-5,slope-minibatch-1,slope-minibatch-5,slope-normal,slope-sgd-1,slope-batch-5}

[[ -f $DATA/meta.json ]] || "$PY" "$SHARED/gen_data.py" "$DATA" --rows 10000000 --features 64 --shards 16

# One extra configuration per slope run: train, then hand run_peers.py {"w", "b"}.
extra=$(mktemp --suffix .json)
trap 'rm -f "$extra"' EXIT
"$PY" - "$SLOPE" "$extra" <<'PY'
import json, sys
slope, path = sys.argv[1], sys.argv[2]
runs = [
    ("slope-minibatch-1", "minibatch, batch 1024, 1 epoch", ["--algo", "minibatch", "--batch-size", "1024", "--epochs", "1"], 1),
    ("slope-minibatch-5", "minibatch, batch 1024, 5 epochs", ["--algo", "minibatch", "--batch-size", "1024", "--epochs", "5", "--tol", "0"], 5),
    ("slope-normal", "closed form (normal equations, f64)", ["--algo", "normal"], 1),
    ("slope-sgd-1", "sgd, one row per update, 1 epoch", ["--algo", "sgd", "--epochs", "1"], 1),
    # Full-batch descent on the sampled standardisation: the loss's Hessian is then about 2·I,
    # so a step of 0.5 (not the default 0.1, which is safe for correlated columns) converges in
    # four or five passes.
    ("slope-batch-5", "full-batch GD, --eta 0.5, 5 epochs", ["--algo", "batch", "--eta", "0.5", "--epochs", "5", "--tol", "0"], 5),
]
out = []
for name, setting, flags, passes in runs:
    model = "{work}/" + name + ".model.json"
    result = "{work}/" + name + ".json"
    convert = ("import json; m = json.load(open('" + model + "')); "
               "json.dump({{'w': m['weights'], 'b': m['bias']}}, open('" + result + "', 'w'))")
    train = [slope, "-q", "train", "{data}/train", "--target", "y", "--model", model] + flags
    cmd = ["sh", "-c", " ".join("'" + a + "'" for a in train) + " && \"$0\" -c \"$1\"", "{python}", convert]
    out.append({"name": name, "peer": "slope", "setting": setting, "cmd": cmd,
                "passes": passes, "model_json": result})
json.dump(out, open(path, "w"), indent=1)
PY
"$PY" "$SHARED/run_peers.py" "$DATA" --repeats "${REPEATS:-2}" --wait-quiet "${WAIT_QUIET:-20}" \
  --extra-config "$extra" --only "$ONLY" --results-dir "$PEERS_ROOT/results/slope-$DATASET"
cat "$PEERS_ROOT/results/slope-$DATASET/table.md"
