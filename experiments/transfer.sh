#!/bin/bash
# A core fitted on other animals (or sessions), transferred to a new one with 10-100% of its
# training trials, against fitting that animal alone (experiments/transfer.md).
# Usage: experiments/transfer.sh DATA OUT [STEP...]
#   DATA: the cowley_v4 folder (images/, responses_repeat_averaged/); OUT: where stores and runs go.
#   STEP: simulate cores scratch frozen finetune table (default: all, in that order).
# Every step skips outputs that already exist, so the script resumes where it stopped.
#
# Simulated: animals of seeds 1-3 give the core, the animal of seed 0 (the session of
# experiments/fit_simulated.md) gets new readouts; the small twin of experiments/small_twin.toml.
# V4 (datasets/cowley_v4.md): per monkey, the first session gives the core and the second gets
# new readouts (WE: 190925 -> 190927, PE: 210224 -> 210322); the default twin, as in
# experiments/real_v4.md.
set -euo pipefail
DATA=$1; OUT=$2; shift 2
STEPS=${*:-simulate cores scratch frozen finetune table}
FRACTIONS=${FRACTIONS:-0.1 0.25 0.5 1}
HERE=$(cd "$(dirname "$0")/.." && pwd)
SMALL=$HERE/experiments/small_twin.toml
mkdir -p "$OUT/sim" "$OUT/v4" "$OUT/configs"
source "$HERE/experiments/common.sh"

# The held-out animal or session of each experiment, its core run, its config file name.
declare -A TARGET=([sim]=$OUT/sim/animal_0.zarr [WE]=$OUT/v4/cowley_190927.zarr [PE]=$OUT/v4/cowley_210322.zarr)
declare -A CONFIG=([sim]=sim [WE]=v4 [PE]=v4)

curve() {  # curve KIND [FLAGS]: one fit per experiment and fraction, into OUT/<experiment>_<KIND>_<fraction>
    local kind=$1; shift
    for f in $FRACTIONS; do
        for e in sim PE WE; do
            local flags=("$@")
            [ ${#flags[@]} -gt 0 ] && flags=(--core "$OUT/core_$e" "${flags[@]:1}")
            fit_once "${e}_${kind}_$f" "${TARGET[$e]}" --config "$OUT/configs/${CONFIG[$e]}_$f.toml" "${flags[@]}"
        done
    done
}

for step in $STEPS; do
    case $step in
    simulate)
        for seed in 0 1 2 3; do
            [ -e "$OUT/sim/animal_$seed.zarr" ] || twin simulate "$OUT/sim/animal_$seed.zarr" --size 18x32 --neurons 50 --seed $seed
        done
        for s in 190925 190927 210224 210322; do
            [ -e "$OUT/v4/cowley_$s.zarr" ] || twin import images "$DATA/images/images_$s.zip" \
                "$DATA/responses_repeat_averaged/responses_$s.npy" "$OUT/v4/cowley_$s.zarr"
        done
        for f in $FRACTIONS; do
            with_fraction "$SMALL" "$f" "$OUT/configs/sim_$f.toml"
            with_fraction - "$f" "$OUT/configs/v4_$f.toml"
        done ;;
    cores)
        fit_once core_sim "$OUT"/sim/animal_{1,2,3}.zarr --config "$SMALL"
        fit_once core_PE "$OUT/v4/cowley_210224.zarr"
        fit_once core_WE "$OUT/v4/cowley_190925.zarr" ;;
    scratch)
        curve scratch ;;
    frozen)
        curve frozen --core --freeze-core ;;
    finetune)
        curve finetune --core ;;
    table)
        python "$HERE/experiments/transfer_table.py" "$OUT" ;;
    esac
done
