#!/bin/bash
# float32 against bfloat16 on the simulated animal (experiments/precision.md): the small twin of
# experiments/fit_simulated.md fitted in each precision (same seed), then walker2019 MEIs of
# experiments/mei_simulated.md on each twin, in each precision.
# Usage: experiments/precision.sh OUT. Every step skips outputs that already exist.
set -euo pipefail
OUT=$1
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
source "$HERE/experiments/common.sh"

[ -e "$OUT/sim18.zarr" ] || twin simulate "$OUT/sim18.zarr" --size 18x32 --neurons 50 --seed 0
python - "$HERE/experiments/small_twin.toml" "$OUT/small_twin_bf16.toml" <<'PY'
import sys, tomllib, tomli_w
values = tomllib.load(open(sys.argv[1], "rb"))
values.setdefault("fit", {})["precision"] = "bfloat16"
open(sys.argv[2], "wb").write(tomli_w.dumps(values).encode())
PY
printf '[mei]\nprecision = "bfloat16"\n' > "$OUT/mei_bf16.toml"

# The two fits side by side (the CPU times are the comparable figures on a shared machine).
fit_once fit_float32 "$OUT/sim18.zarr" --config "$HERE/experiments/small_twin.toml" &
fit_once fit_bfloat16 "$OUT/sim18.zarr" --config "$OUT/small_twin_bf16.toml" &
wait

# Test scores of each twin evaluated in float32 (`twin evaluate`; the fit's own summary scores in
# its [fit].precision).
for precision in float32 bfloat16; do
    [ -e "$OUT/evaluate_$precision.json" ] ||
        twin evaluate "$OUT/fit_$precision" --tier test --json > "$OUT/evaluate_$precision.json"
done

mei_once() {  # mei_once NAME RUN [FLAGS]: 50 neurons x 2 seeds, walker2019, into OUT/NAME.zarr and NAME.json
    local name=$1 run=$2; shift 2
    [ -e "$OUT/$name.json" ] && return
    timed "$name" twin mei "$run" --neurons all --seeds 2 --recipe walker2019 --out "$OUT/$name.zarr" \
        --overwrite --json "$@" > "$OUT/$name.json.tmp"
    mv "$OUT/$name.json.tmp" "$OUT/$name.json"
}
mei_once mei_float32_on_float32 "$OUT/fit_float32"
mei_once mei_bfloat16_on_float32 "$OUT/fit_float32" --config "$OUT/mei_bf16.toml"
mei_once mei_bfloat16_on_bfloat16 "$OUT/fit_bfloat16" --config "$OUT/mei_bf16.toml"
mei_once mei_float32_on_bfloat16 "$OUT/fit_bfloat16"

# Speed on this machine at the Sensorium shapes of `twin bench` (forward and train, no peer).
for precision in float32 bfloat16; do
    [ -e "$OUT/bench_$precision.json" ] ||
        python -c "import json, sys; from twin.bench import run_suite
json.dump(run_suite(peer=False, parts=('forward', 'train'), precision=sys.argv[1]), open(sys.argv[2], 'w'))" \
            "$precision" "$OUT/bench_$precision.json"
done

python "$HERE/experiments/precision_table.py" "$OUT"
