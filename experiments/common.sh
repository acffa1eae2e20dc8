# Shared by the experiment scripts: `source experiments/common.sh` after setting OUT.

timed() {  # timed NAME COMMAND...: run, then append "NAME wall_s cpu_s" to OUT/times.txt
    local name=$1; shift
    local start; start=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o "$OUT/.time.$name" "$@"  # one file per name: scripts may run side by side
    echo "$name $(echo "$(date +%s.%N) - $start" | bc) $(awk '{print $1 + $2}' "$OUT/.time.$name")" >> "$OUT/times.txt"
    rm "$OUT/.time.$name"
}

fit_once() {  # fit_once NAME STORE... [FLAGS]: twin fit into OUT/NAME unless it finished; resumes a killed fit
    local name=$1; shift
    [ -e "$OUT/$name/summary.json" ] && return
    mkdir "$OUT/.$name.running" 2>/dev/null || return 0  # another copy of the script is fitting it
    local resume=(); [ -d "$OUT/$name/checkpoints" ] && resume=(--resume)
    timed "$name" twin fit "$@" --out "$OUT/$name" "${resume[@]}"
    rmdir "$OUT/.$name.running"
}

with_fraction() {  # with_fraction CONFIG FRACTION OUTFILE: CONFIG (or the defaults) with [data].train_fraction set
    python - "$@" <<'PY'
import sys, tomllib, tomli_w
source, fraction, out = sys.argv[1:]
values = {} if source == "-" else tomllib.load(open(source, "rb"))
values.setdefault("data", {})["train_fraction"] = float(fraction)
open(out, "wb").write(tomli_w.dumps(values).encode())
PY
}
