#!/bin/bash
# The twin on the Cowley V4 sessions, side by side with the neuralpredictors peer and two ridge
# baselines (experiments/real_v4.md). Usage: experiments/real_v4.sh DATA OUT [STEP...]
#   DATA: the cowley_v4 folder (images/, responses_repeat_averaged/); OUT: where stores and runs go.
#   STEP: import twin ensemble shared peer ridge mei seeds table (default: all, in that order).
#   seeds: the twin (defaults, [fit].seed K) and the peer (--seed K) for K = 0, 1, 2.
# Every step skips outputs that already exist, so the script resumes where it stopped.
set -euo pipefail
DATA=$1; OUT=$2; shift 2
STEPS=${*:-import twin ensemble shared peer ridge mei seeds table}
SESSIONS=${SESSIONS:-190925 190927 210224 210322}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT/auto" "$OUT/native"

source "$HERE/experiments/common.sh"

for step in $STEPS; do
    case $step in
    import)
        for s in $SESSIONS; do
            for size in auto native; do  # auto: 28x28, what the twins and the peer see; native for ridge
                store=$OUT/$size/cowley_$s.zarr
                [ -e "$store" ] || twin import images "$DATA/images/images_$s.zip" \
                    "$DATA/responses_repeat_averaged/responses_$s.npy" "$store" --size $size
            done
        done ;;
    twin)
        for s in $SESSIONS; do
            fit_once "twin_$s" "$OUT/auto/cowley_$s.zarr"
        done ;;
    ensemble)
        for s in $SESSIONS; do
            fit_once "ensemble_$s" "$OUT/auto/cowley_$s.zarr" --seeds 3
        done ;;
    shared)  # one core per monkey, one readout per session
        fit_once shared_WE "$OUT/auto/cowley_190925.zarr" "$OUT/auto/cowley_190927.zarr"
        fit_once shared_PE "$OUT/auto/cowley_210224.zarr" "$OUT/auto/cowley_210322.zarr" ;;
    peer)
        for s in $SESSIONS; do
            [ -e "$OUT/peer_$s/metrics.json" ] || timed "peer_$s" python "$HERE/benchmarks/peer_fit_torch.py" "$OUT/auto/cowley_$s.zarr" --out "$OUT/peer_$s" --threads 1
        done ;;
    ridge)
        for s in $SESSIONS; do
            [ -e "$OUT/ridge_$s/metrics.json" ] || timed "ridge_$s" python "$HERE/benchmarks/ridge_fit.py" "$OUT/native/cowley_$s.zarr" --out "$OUT/ridge_$s"
        done ;;
    mei)
        for s in $SESSIONS; do
            # the 8 neurons the twin predicts best (positions), three seeds, checked by the ensemble
            best=$(python -c "import numpy as np; from twin.evaluate import evaluate_run
r = np.nan_to_num(evaluate_run('$OUT/twin_$s')[0]['per_neuron']['single_trial_correlation'], nan=-1)
print(','.join(map(str, np.argsort(-r)[:8])))")
            [ -e "$OUT/meis_$s.zarr" ] || timed "mei_$s" twin mei "$OUT/twin_$s" --neurons "$best" --seeds 3 \
                --validator "$OUT/ensemble_$s" --out "$OUT/meis_$s.zarr"
        done ;;
    seeds)
        for s in $SESSIONS; do
            for k in 0 1 2; do
                printf '[fit]\nseed = %d\n' $k > "$OUT/seed_$k.toml"
                fit_once "twin_${s}_seed$k" "$OUT/auto/cowley_$s.zarr" --config "$OUT/seed_$k.toml"
                [ -e "$OUT/peer_${s}_seed$k/metrics.json" ] || timed "peer_${s}_seed$k" python "$HERE/benchmarks/peer_fit_torch.py" \
                    "$OUT/auto/cowley_$s.zarr" --out "$OUT/peer_${s}_seed$k" --threads 1 --seed $k
            done
        done ;;
    table)
        python "$HERE/experiments/real_v4_table.py" "$OUT" ;;
    esac
done
