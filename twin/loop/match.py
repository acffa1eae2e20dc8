"""Find the neurons again: pair the units of two sessions of one field of view (day 1, day 2).

1. Rigid shift (day-2 position - day-1 position): the mode of all displacement vectors between
   the two position sets (a 3-D histogram with bins of half the tolerance, the densest 2x2x2
   block of bins), refined by the mean displacement of mutual nearest neighbours closer than the
   tolerance until it settles. A shift resting on fewer than MIN_MUTUAL of them is refused (one
   pair agrees with any shift fitted to it); a tolerance near the cells' day-to-day position
   noise (position_noise), or beyond the spacing of neighbouring cells, gets a warning.
2. Candidates: pairs closer than the tolerance once the shift is removed.
3. Responses, where both days showed the same images (found by pixel content, a hash of each
   image in screen levels, never by image_id: ids differ across stores): each unit's
   trial-averaged responses to the shared images give every candidate pair a correlation r and a
   specificity: the fraction of the day-2 units whose correlation with the day-1 unit is below r
   (1: no other day-2 unit resembles the day-1 unit more; 0.5 when r is undefined, e.g. a silent
   unit). Fewer than MIN_SHARED_IMAGES shared images: positions only.
4. Confidence of a pair, 0..1: position = 1 - distance / tolerance; with responses,
   (position + specificity) / 2, else position alone.
5. One-to-one: the assignment of candidates with the largest summed confidence
   (scipy.optimize.linear_sum_assignment on each connected group of candidates); units left
   without a partner are left out.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from twin.data.schema import pixel_range, to_levels, unit_ids
from twin.errors import ConfigError, SessionError, TwinWarning

TOLERANCE_UM = 10.0
MIN_SHARED_IMAGES = 10
MIN_MUTUAL = 2  # mutual nearest neighbours a shift must rest on (one pair agrees with itself)
MAX_CELLS_FOR_SHIFT = 2000  # cells of each day in the displacement histogram (all pairs: 4M vectors)
MAX_BINS = 2000  # per axis of that histogram
COLUMNS = ("day1_unit", "day2_unit", "distance_um", "response_correlation", "confidence")


def cell_positions(ds, source) -> np.ndarray:
    """(neuron, 3) float64 µm from cell_x, cell_y and cell_z (depth 0 when a store has none)."""
    if "cell_x" not in ds or "cell_y" not in ds:
        raise SessionError(
            f"{source}: no cell positions (cell_x, cell_y); twin match pairs units by position, so"
            " import the session with its cells' positions"
        )
    depth = ds["cell_z"].values if "cell_z" in ds else np.zeros(ds.sizes["neuron"])
    xyz = np.stack([np.asarray(v, np.float64) for v in (ds["cell_x"].values, ds["cell_y"].values, depth)], axis=1)
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        axis = "xyz"[int(np.flatnonzero(~np.isfinite(xyz[bad][0]))[0])]
        raise SessionError(
            f"{source}: variable 'cell_{axis}' holds NaN or inf for {int(bad.sum())} of {len(xyz)} units; give"
            " every unit a position (or drop the units without one) before twin match"
        )
    if len(xyz) > 1 and np.ptp(xyz, axis=0).max() == 0:
        raise SessionError(
            f"{source}: all {len(xyz)} units share one position (cell_x, cell_y, cell_z); twin match pairs units"
            " by position, so import the session with its cells' positions"
        )
    return xyz


def spacing(xyz: np.ndarray) -> float | None:
    """Median distance (µm) from each cell to its nearest neighbour of the same day; None for one cell."""
    return float(np.median(cKDTree(xyz).query(xyz, k=2)[0][:, 1])) if len(xyz) > 1 else None


def subsample(xyz: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(xyz) <= MAX_CELLS_FOR_SHIFT:
        return xyz
    return xyz[rng.choice(len(xyz), MAX_CELLS_FOR_SHIFT, replace=False)]


def densest(values: np.ndarray, width: float) -> np.ndarray:
    """(n,) bool: the rows of ``values`` (n, k) in the densest block of 2^k neighbouring bins of
    a k-dimensional histogram with bins ``width`` wide."""
    index = np.floor((values - values.min(axis=0)) / width).astype(np.int64)
    shape = tuple(index.max(axis=0) + 1)
    counts = np.bincount(np.ravel_multi_index(index.T, shape), minlength=int(np.prod(shape))).reshape(shape)
    padded = np.pad(counts, 1)[(slice(1, None),) * len(shape)]  # one empty bin past each end
    block = sum(
        padded[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
        for offset in np.ndindex(*(2,) * len(shape))
    )
    corner = np.array(np.unravel_index(np.argmax(block), shape))
    return np.all((index >= corner) & (index <= corner + 1), axis=1)


def displacement_mode(xyz1: np.ndarray, xyz2: np.ndarray, tolerance: float) -> np.ndarray:
    """(3,) the median of the displacement vectors xyz2[j] - xyz1[i] (all pairs) in their densest
    block: in x-y (bins of tolerance / 2, or wider to keep MAX_BINS per axis), then in depth
    among those."""
    rng = np.random.default_rng(0)
    d = (subsample(xyz2, rng)[None] - subsample(xyz1, rng)[:, None]).reshape(-1, 3)
    # at most MAX_BINS bins per axis, whatever the tolerance
    width = max(tolerance / 2, float(np.ptp(d, axis=0).max()) / MAX_BINS)
    d = d[densest(d[:, :2], width)]
    d = d[densest(d[:, 2:], width)]
    return np.median(d, axis=0)


def mutual_neighbours(xyz1: np.ndarray, xyz2: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j) of the pairs that are each other's nearest neighbour and closer than tolerance."""
    distance, j = cKDTree(xyz2).query(xyz1, distance_upper_bound=tolerance)
    back = cKDTree(xyz1).query(xyz2)[1]
    i = np.flatnonzero(np.isfinite(distance))
    keep = back[j[i]] == i
    return i[keep], j[i][keep]


def estimate_shift(xyz1: np.ndarray, xyz2: np.ndarray, tolerance: float) -> tuple[np.ndarray, int]:
    """(shift (3,) µm: day-2 position - day-1 position, number of mutual nearest neighbours it
    rests on); see the module doc."""
    shift = displacement_mode(xyz1, xyz2, tolerance)
    n = 0
    for _ in range(20):
        i, j = mutual_neighbours(xyz1, xyz2 - shift, tolerance)
        n = len(i)
        if n == 0:
            break
        step = (xyz2[j] - shift - xyz1[i]).mean(axis=0)
        shift = shift + step
        if np.linalg.norm(step) < 1e-3 * tolerance:
            break
    return shift, n


def check_shift(mutual: int, day1, day2, tolerance: float) -> None:
    """Refuse a shift that rests on fewer than MIN_MUTUAL pairs of cells: one pair always agrees
    with itself, so its shift (and every pair found with it) says nothing."""
    if mutual < MIN_MUTUAL:
        raise SessionError(
            f"{day1}, {day2}: the cell positions (cell_x, cell_y, cell_z) agree on no shift of the field of view:"
            f" mutual nearest neighbours within --tolerance {tolerance:g} µm after it: {mutual} ({MIN_MUTUAL} needed);"
            " check that both stores image the same field with more than one cell, or raise --tolerance"
        )


def position_noise(xyz1: np.ndarray, xyz2: np.ndarray, tolerance: float, shift: np.ndarray, cell_spacing: float | None) -> float | None:
    """Median distance (µm) between the two days' positions of a cell: of the mutual nearest
    neighbours within a generous scale, max(2 * tolerance, TOLERANCE_UM), after a shift estimated
    at that scale (``shift``, estimated at ``tolerance``, when that is already TOLERANCE_UM or more).
    None when fewer than 5 such pairs, or when they lie no closer than half the median distance
    between neighbouring cells of day 1 (``cell_spacing``): the days then do not show one field,
    and the distances measure cell spacing, not noise."""
    scale = max(2 * tolerance, TOLERANCE_UM)
    if tolerance < TOLERANCE_UM:
        shift = estimate_shift(xyz1, xyz2, scale)[0]
    i, j = mutual_neighbours(xyz1, xyz2 - shift, scale)
    if len(i) < 5 or cell_spacing is None:
        return None
    noise = float(np.median(np.linalg.norm(xyz2[j] - shift - xyz1[i], axis=1)))
    return noise if noise < cell_spacing / 2 else None


def warn_tolerance(noise: float | None, cell_spacing: float | None, tolerance: float) -> None:
    """A warning line when ``tolerance`` is within twice the position noise (for 3-D Gaussian
    jitter about 3 % of true pairs lie beyond twice the median distance, half beyond the median),
    or beyond the distance between neighbouring cells (a cell's neighbour becomes a candidate)."""
    if cell_spacing is not None and tolerance > cell_spacing:
        warnings.warn(
            f"--tolerance {tolerance:g} µm is above the distance between neighbouring cells (median"
            f" {cell_spacing:.1f} µm on day 1), so a cell may be paired with its neighbour; use a tolerance"
            f" below {cell_spacing:.1f} µm",
            TwinWarning,
            stacklevel=2,
        )
    elif noise is not None and tolerance < 2 * noise:
        warnings.warn(
            f"--tolerance {tolerance:g} µm is below or near the cells' position noise: the two days'"
            f" positions of a cell lie a median {noise:.1f} µm apart after the shift, so many cells go unmatched"
            f" (or are paired wrongly); use --tolerance {2 * noise:.1f} or more",
            TwinWarning,
            stacklevel=2,
        )


def image_hashes(ds, source) -> np.ndarray:
    """(trial,) a digest of each trial's image in screen levels 0..255 (2 decimals), so the same
    picture hashes alike in stores of either dtype or pixel range."""
    images, lo_hi = ds["images"].values, pixel_range(ds, source)
    digests = []
    for start in range(0, len(images), 256):  # float64 levels of a few images at a time
        levels = np.round(to_levels(images[start : start + 256], lo_hi), 2).astype(np.float32)
        digests += [hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() for image in levels]
    return np.array(digests)


def image_means(hashes: np.ndarray, responses: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """(shared image, neuron) trial-averaged responses (NaN = not recorded left out)."""
    means = np.full((len(shared), responses.shape[1]), np.nan, np.float64)
    for k, h in enumerate(shared):
        rows = np.asarray(responses[hashes == h], np.float64)
        recorded = np.isfinite(rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[k] = np.where(recorded, rows, 0).sum(0) / recorded.sum(0)
    return means


def shared_responses(ds1, ds2, source1, source2) -> tuple[np.ndarray, np.ndarray] | None:
    """(day-1 (image, neuron), day-2 (image, neuron)) standardized trial-averaged responses to the
    images both days showed, or None when fewer than MIN_SHARED_IMAGES are shared. A unit with
    constant responses gets NaN."""
    h1, h2 = image_hashes(ds1, source1), image_hashes(ds2, source2)
    shared = np.intersect1d(h1, h2)
    if len(shared) < MIN_SHARED_IMAGES:
        return None
    means = [image_means(h, ds["responses"].values, shared) for h, ds in ((h1, ds1), (h2, ds2))]
    z = []
    for m in means:
        recorded = np.isfinite(m)  # an image a unit missed gets its mean; a unit that missed all, 0 (then NaN)
        fill = np.where(recorded, m, 0).sum(axis=0, keepdims=True) / np.maximum(recorded.sum(axis=0, keepdims=True), 1)
        m = np.where(recorded, m, fill)
        m = m - m.mean(axis=0)
        std = m.std(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            z.append(np.where(std > 0, m / std, np.nan))
    return z[0], z[1]


def response_scores(z1: np.ndarray, z2: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correlation, specificity), each (pair,), of the candidate pairs (rows: day-1 units, cols:
    day-2 units) from standardized responses z1 (image, n1), z2 (image, n2); see the module doc."""
    correlation = np.full(len(rows), np.nan)
    specificity = np.full(len(rows), 0.5)
    chunk = 512
    for start in range(0, z1.shape[1], chunk):
        pick = np.flatnonzero((rows >= start) & (rows < start + chunk))
        if len(pick) == 0:
            continue
        block = z1[:, start : start + chunk].T @ z2 / len(z1)  # (chunk, n2) correlations
        r = block[rows[pick] - start, cols[pick]]
        others = np.isfinite(block[rows[pick] - start]).sum(axis=1) - 1
        below = (block[rows[pick] - start] < r[:, None]).sum(axis=1)
        correlation[pick] = r
        defined = np.isfinite(r) & (others > 0)
        specificity[pick[defined]] = below[defined] / others[defined]
    return correlation, specificity


def assign(rows: np.ndarray, cols: np.ndarray, gain: np.ndarray, n1: int, n2: int) -> np.ndarray:
    """Indices into the candidate pairs of the one-to-one assignment with the largest summed gain,
    solved on each connected group of candidates."""
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, n1 + cols)), shape=(n1 + n2, n1 + n2))
    _, label = sparse.csgraph.connected_components(graph, directed=False)
    chosen = []
    group_of_pair = label[rows]
    order = np.argsort(group_of_pair, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(group_of_pair[order]) != 0])
    for members in np.split(order, starts[1:]):
        if len(members) == 1:
            chosen.append(members[0])
            continue
        r, r_index = np.unique(rows[members], return_inverse=True)
        c, c_index = np.unique(cols[members], return_inverse=True)
        matrix = np.zeros((len(r), len(c)))
        which = np.full((len(r), len(c)), -1)
        matrix[r_index, c_index] = gain[members]
        which[r_index, c_index] = members
        a, b = linear_sum_assignment(matrix, maximize=True)
        chosen += [which[x, y] for x, y in zip(a, b) if which[x, y] >= 0]
    return np.sort(np.array(chosen, np.int64))


def truth_scores(ds2, ids1: np.ndarray, ids2: np.ndarray, pairs1: np.ndarray, pairs2: np.ndarray) -> dict | None:
    """Precision and recall of the pairs against a simulated day 2's gt_day1_unit, or None."""
    if "gt_day1_unit" not in ds2:
        return None
    truth = unit_ids(ds2["gt_day1_unit"].values)
    if truth.dtype.kind != ids1.dtype.kind:
        return None
    kept = np.isin(truth, ids1)
    true_pairs = set(zip(truth[kept].tolist(), ids2[kept].tolist()))
    found = set(zip(pairs1.tolist(), pairs2.tolist()))
    correct = len(found & true_pairs)
    return {
        "true_pairs": len(true_pairs),
        "correct": correct,
        "precision": correct / len(found) if found else None,
        "recall": correct / len(true_pairs) if true_pairs else None,
    }


def match_sessions(day1: str | Path, day2: str | Path, tolerance: float = TOLERANCE_UM) -> dict:
    """Pair the units of the session stores ``day1`` and ``day2`` (see the module doc).

    Returns {"pairs": {column: array (pair,)} in COLUMNS order, sorted by day-1 unit, "shift_um"
    (3,), "mutual_neighbours", "shared_images", "n_day1", "n_day2", "unmatched_day1",
    "unmatched_day2", "tolerance_um", "truth" (precision and recall against gt_day1_unit, or
    None)}.
    """
    from twin.data.store import load_values, open_session

    if not tolerance > 0:
        raise ConfigError(f"--tolerance {tolerance}: give a positive distance in µm")
    ds1, ds2 = (load_values(open_session(path), path) for path in (day1, day2))
    xyz1, xyz2 = cell_positions(ds1, day1), cell_positions(ds2, day2)
    ids1, ids2 = unit_ids(ds1["unit_id"].values), unit_ids(ds2["unit_id"].values)
    shift, mutual = estimate_shift(xyz1, xyz2, tolerance)
    check_shift(mutual, day1, day2, tolerance)
    cell_spacing = spacing(xyz1)
    warn_tolerance(position_noise(xyz1, xyz2, tolerance, shift, cell_spacing), cell_spacing, tolerance)
    found = cKDTree(xyz1).sparse_distance_matrix(cKDTree(xyz2 - shift), tolerance, output_type="ndarray")
    rows, cols, distance = found["i"].astype(np.int64), found["j"].astype(np.int64), found["v"]
    keep = distance < tolerance
    rows, cols, distance = rows[keep], cols[keep], distance[keep]
    position = 1 - distance / tolerance
    responses = shared_responses(ds1, ds2, day1, day2)
    correlation = np.full(len(rows), np.nan)
    confidence = position
    if responses is not None:
        correlation, specificity = response_scores(*responses, rows, cols)
        confidence = (position + specificity) / 2
    chosen = assign(rows, cols, confidence, len(ids1), len(ids2)) if len(rows) else np.zeros(0, np.int64)
    chosen = chosen[confidence[chosen] > 0]
    chosen = chosen[np.argsort(rows[chosen], kind="stable")]
    pairs = {
        "day1_unit": ids1[rows[chosen]],
        "day2_unit": ids2[cols[chosen]],
        "distance_um": distance[chosen],
        "response_correlation": correlation[chosen],
        "confidence": confidence[chosen],
    }
    return {
        "pairs": pairs,
        "shift_um": shift,
        "mutual_neighbours": mutual,
        "shared_images": 0 if responses is None else len(responses[0]),
        "n_day1": len(ids1),
        "n_day2": len(ids2),
        "unmatched_day1": len(ids1) - len(chosen),
        "unmatched_day2": len(ids2) - len(chosen),
        "tolerance_um": tolerance,
        "truth": truth_scores(ds2, ids1, ids2, pairs["day1_unit"], pairs["day2_unit"]),
    }


def write_matches(path: Path, pairs: dict) -> None:
    """The pairs as CSV (COLUMNS; an undefined response correlation is an empty cell)."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for u1, u2, d, r, c in zip(*(pairs[name].tolist() for name in COLUMNS)):
            writer.writerow([u1, u2, f"{d:.3f}", "" if np.isnan(r) else f"{r:.4f}", f"{c:.4f}"])


def match_command(day1, day2, out, tolerance: float = TOLERANCE_UM, overwrite: bool = False) -> dict:
    """`twin match`: pair the units, write ``out`` (.csv), return ``match_sessions``' result."""
    from twin.outputs import check_output, output

    if Path(out).suffix != ".csv":
        raise ConfigError(f"--out {out}: name the pairs file with a .csv suffix")
    check_output(out, overwrite, "file", inputs=[day1, day2])
    result = match_sessions(day1, day2, tolerance)
    with output(out, overwrite, "file", inputs=[day1, day2]) as staged:
        write_matches(staged, result["pairs"])
    return result


def format_match(result: dict, day1, day2, out=None) -> str:
    """The one-screen summary of ``match_sessions``' result."""
    pairs = result["pairs"]
    n = len(pairs["day1_unit"])
    x, y, z = result["shift_um"]

    def median(values):
        values = values[np.isfinite(values)]
        return f"{np.median(values):.2f}" if len(values) else "n/a"

    lines = [
        f"day 1: {day1} ({result['n_day1']} units); day 2: {day2} ({result['n_day2']} units)",
        f"field-of-view shift (day 2 - day 1): x {x:+.1f}, y {y:+.1f}, z {z:+.1f} µm"
        f" ({result['mutual_neighbours']} mutual nearest neighbours within {result['tolerance_um']:g} µm)",
        (
            f"shared images: {result['shared_images']} (same pixels on both days): responses disambiguate and score"
            if result["shared_images"]
            else f"shared images: fewer than {MIN_SHARED_IMAGES}: pairs from positions only"
        ),
        f"matched: {n} pairs (median distance {median(pairs['distance_um'])} µm, median response correlation"
        f" {median(pairs['response_correlation'])}, median confidence {median(pairs['confidence'])})",
        f"unmatched: {result['unmatched_day1']} units of day 1, {result['unmatched_day2']} of day 2",
    ]
    truth = result["truth"]
    if truth is not None and n:
        lines.append(
            f"against the simulation's truth (gt_day1_unit): precision {truth['precision']:.3f},"
            f" recall {truth['recall']:.3f} ({truth['correct']} of {truth['true_pairs']} pairs)"
        )
    if n == 0:
        lines.append("no pair within the tolerance: check that both stores image the same field, or raise --tolerance")
    if out is not None:
        lines.append(f"wrote {out}")
    return "\n".join(lines)
