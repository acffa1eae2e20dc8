"""The closed-loop report: PNG figures and one self-contained index.html (images embedded).

Figures: fit_curves.png (the run's metrics.jsonl), prediction_scatter.png (twin vs animal, one
point per shown stimulus), mei_grid.png (each neuron's MEI next to its controls, as shown on the
screen), responses_bar.png (mean ± s.e.m. response to the MEI and each control, per neuron).
For clips (a video export) the grid shows each clip's middle frame, the page plays each neuron's
MEV and natural control as animated GIFs (the export's previews) and xt_<stimulus id>.png is the
MEV's space-time slice: the clip's centre row (x, across) frame by frame (t, down).
Every value enters index.html HTML-escaped, through ``text``.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from twin.data.schema import plot_text  # noqa: E402
from twin.errors import RunError  # noqa: E402
from twin.loop.files import (  # noqa: E402
    clip_paths,
    is_clip_manifest,
    preview_path,
    stimulus_mode,
    stimulus_path,
)

KIND_COLORS = {"mei": "#c0392b", "dei": "#e67e22", "natural": "#2c7fb8", "natural_masked": "#7fcdbb"}
GRID_MAX_NEURONS = 32  # rows of the MEI grid; larger loops show the first ones


def read_metrics(run: Path) -> list[dict]:
    """The run's metrics.jsonl as a list of dicts (empty when the file is missing)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for index, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise RunError(f"{path}: line {index} is not a JSON object; delete the line or fit the run again")
        rows.append(row)
    return rows


FIT_PANELS = {  # panel title: substrings of the metrics.jsonl keys drawn in it
    "training loss": ("loss", "poisson", "gaussian"),
    "validation correlation": ("corr",),
    "learning rate": ("learning_rate", "lr"),
}


def plot_fit_curves(metrics: list[dict], path: Path) -> bool:
    """Loss, validation correlation and learning rate per epoch from metrics.jsonl."""
    numeric = sorted(
        {k for row in metrics for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    )
    panels = {
        title: [k for k in numeric if any(part in k for part in parts)] for title, parts in FIT_PANELS.items()
    }
    panels = {title: keys for title, keys in panels.items() if keys}
    if not panels:
        return False
    epochs = [row.get("epoch", i) for i, row in enumerate(metrics)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels.items()):
        for key in keys:
            ax.plot(epochs, [row.get(key, np.nan) for row in metrics], marker=".", label=key)
        if title == "learning rate":
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_prediction_scatter(summary: dict, path: Path) -> None:
    """Twin's predicted response vs the measured mean (± s.e.m.) for every shown stimulus."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    points = [m for n in summary["neurons"] for m in n["stimuli"]]
    for kind, color in KIND_COLORS.items():
        chosen = [m for m in points if m["kind"] == kind]
        if chosen:
            ax.errorbar(
                [m["predicted"] for m in chosen],
                [m["measured"] for m in chosen],
                yerr=[m["sem"] or 0.0 for m in chosen],
                fmt="o",
                ms=4,
                color=color,
                label=kind,
                alpha=0.8,
            )
    if points:
        top = max(max(m["predicted"] for m in points), max(m["measured"] for m in points))
        ax.plot([0, top], [0, top], color="0.6", lw=0.8, ls="--")
    r = summary["prediction_correlation"]
    ax.set_title(f"predicted vs measured (r = {r:.2f})" if r is not None else "predicted vs measured")
    ax.set_xlabel("twin prediction")
    ax.set_ylabel("measured mean response")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mei_grid(summary: dict, manifest: dict, stimuli: Path, path: Path) -> None:
    """Rows: neurons; columns: MEI, DEIs, controls, as shown on the screen."""
    neurons = summary["neurons"][:GRID_MAX_NEURONS]
    listed = {s["stimulus_id"]: s for s in manifest["stimuli"]}
    order = {"mei": 0, "dei": 1, "natural": 2, "natural_masked": 3}
    rows = [sorted(n["stimuli"], key=lambda m: (order[m["kind"]], m["stimulus_id"])) for n in neurons]
    columns = max((len(row) for row in rows), default=1)
    height, width = manifest["screen_shape"]
    mode = stimulus_mode(manifest)
    fig, axes = plt.subplots(
        max(len(rows), 1),
        columns,
        figsize=(1.9 * columns * width / max(height, width) + 0.6, 1.25 * max(len(rows), 1) + 0.4),
        squeeze=False,
    )
    for ax in axes.flat:
        ax.axis("off")
    for r, (neuron, row) in enumerate(zip(neurons, rows)):
        for c, shown in enumerate(row):
            ax = axes[r, c]
            file = shown_image(stimuli, listed[shown["stimulus_id"]], manifest)
            with Image.open(file) as image:
                # gray PNGs through the gray colour map; RGB ones as they are
                ax.imshow(np.asarray(image), **({"cmap": "gray", "vmin": 0, "vmax": 255} if mode == "L" else {}))
            ax.set_title(f"{shown['kind']} {shown['measured']:.2f}", fontsize=7)
        axes[r, 0].text(
            -0.05, 0.5, f"unit {plot_text(neuron['unit_id'])}", transform=axes[r, 0].transAxes,
            ha="right", va="center", fontsize=7,
        )
    shown_as = "clips' middle frames" if is_clip_manifest(manifest) else "stimuli"
    fig.suptitle(f"{shown_as} as shown (title: measured mean response)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def shown_image(stimuli: Path, stimulus: dict, manifest: dict) -> Path:
    """The image file that stands for a stimulus in the grid: the image, or a clip's middle frame."""
    mode = stimulus_mode(manifest)
    if is_clip_manifest(manifest):
        frames = manifest["frames"]
        return clip_paths(stimuli, stimulus, manifest["screen_shape"], frames, mode)[frames // 2]
    return stimulus_path(stimuli, stimulus, manifest["screen_shape"], mode)


XT_ROW_HEIGHT = 4  # screen pixels per frame in a space-time slice


def write_xt_slice(stimuli: Path, stimulus: dict, manifest: dict, path: Path) -> None:
    """PNG of a clip's space-time slice: its centre row (x, across) in every frame (t, down)."""
    frames = clip_paths(stimuli, stimulus, manifest["screen_shape"], manifest["frames"], stimulus_mode(manifest))
    centre = manifest["screen_shape"][0] // 2
    rows = []
    for frame in frames:
        with Image.open(frame) as image:
            rows.append(np.asarray(image)[centre])
    slice_ = np.repeat(np.stack(rows), XT_ROW_HEIGHT, axis=0)
    Image.fromarray(slice_).save(path, format="PNG")


def clip_section(summary: dict, manifest: dict, stimuli: Path, folder: Path) -> str:
    """HTML of each neuron's MEV and natural control playing (GIFs) and the MEV's space-time
    slice (written to ``folder``)."""
    listed = {s["stimulus_id"]: s for s in manifest["stimuli"]}
    parts = [
        f"<p>{text(manifest['frames'])} frames at {text(manifest['frame_rate'])} Hz; response: mean of the last"
        f" {text(manifest['response_window'])} frames. Space-time slice: the centre row (x, across) frame by"
        " frame (t, down).</p>",
        '<table class="clips">' + row(["unit", "MEV", "natural control", "MEV x–t slice"], "th"),
    ]
    for neuron in summary["neurons"][:GRID_MAX_NEURONS]:
        cells = {}
        for shown in neuron["stimuli"]:
            stimulus = listed[shown["stimulus_id"]]
            if stimulus["kind"] in ("mei", "natural") and stimulus["kind"] not in cells:
                cells[stimulus["kind"]] = embed(preview_path(stimuli, stimulus), "image/gif")
            if stimulus["kind"] == "mei":
                xt = folder / f"xt_{stimulus['stimulus_id']:04d}.png"
                write_xt_slice(stimuli, stimulus, manifest, xt)
                cells["xt"] = embed(xt)
        parts.append(
            f"<tr><td>{text(neuron['unit_id'])}</td>"
            + "".join(f"<td>{cells.get(kind, '–')}</td>" for kind in ("mei", "natural", "xt"))
            + "</tr>"
        )
    return "".join(parts) + "</table>"


def plot_response_bars(summary: dict, path: Path) -> None:
    """Grouped bars per neuron: mean ± s.e.m. measured response to the MEI and to each control."""
    neurons = summary["neurons"]
    kinds = ["mei", "natural", "natural_masked"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(neurons) + 2), 3.6))
    x = np.arange(len(neurons))
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        means, sems = [], []
        for neuron in neurons:
            shown = [m for m in neuron["stimuli"] if m["kind"] == kind]
            means.append(shown[0]["measured"] if shown else np.nan)
            sems.append((shown[0]["sem"] or 0.0) if shown else 0.0)
        ax.bar(x + (k - 1) * width, means, width, yerr=sems, color=KIND_COLORS[kind], label=kind)
    for i, neuron in enumerate(neurons):
        if neuron["mei_beats_controls"]:
            mei = [m for m in neuron["stimuli"] if m["kind"] == "mei"][0]
            ax.text(i - width, mei["measured"] + (mei["sem"] or 0.0), "*", ha="center", va="bottom")
    ax.set_xticks(x, [plot_text(n["unit_id"]) for n in neurons], rotation=90, fontsize=7)
    ax.set_xlabel("unit id (* MEI > strongest control, p < 0.05)")
    ax.set_ylabel("measured response")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def text(value) -> str:
    """Any value as HTML text or attribute value. Values reach the page only through here: the
    manifest and the responses come from the rig, and markup in them must stay text."""
    return html.escape(str(value), quote=True)


def row(values: list, cell: str = "td") -> str:
    """One table row of escaped values; cell is "td" or "th"."""
    return "<tr>" + "".join(f"<{cell}>{text(value)}</{cell}>" for value in values) + "</tr>"


def embed(path: Path, media: str = "image/png") -> str:
    """An <img> holding the file's bytes (the page stays self-contained)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:{media};base64,{data}" alt="{text(path.name)}">'


def luminance_text(value) -> str:
    """A target in cd/m²: one number, or red/green/blue values for a colour monitor."""
    if isinstance(value, list):
        return f"R {value[0]:.3g}, G {value[1]:.3g}, B {value[2]:.3g}"
    return f"{value:.3g}"


def matching_text(target: dict) -> str:
    """How the stimuli met the target: per primary (colour, --matching channel) or on the
    luminance (gray, or colour with --matching luminance)."""
    return "matched per primary" if isinstance(target["mean_luminance"], list) else "matched on luminance"


def spectral_text(manifest: dict) -> str:
    """Median spectral KL of the MEIs and of the natural controls, as the report shows it."""
    kl = spectral_kl(manifest)

    def median(kind):
        values = [v for (_, k), v in kl.items() if k == kind and v is not None]
        return number(float(np.median(values)), 2) if values else "–"

    return f"{median('mei')} / {median('natural')}"


def number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


NEURON_COLUMNS = [
    "unit", "MEI", "natural", "natural masked", "DEIs", "MEI / best natural", "t", "p", "beats controls",
    "predicted MEI", "MEI spectral KL", "natural spectral KL",
]


def spectral_kl(manifest: dict) -> dict:
    """{(unit id as text, kind): the stimulus's spectral KL from the natural images (twin.naturalness)}
    for the MEIs and unmasked natural controls of an export's manifest."""
    return {
        (str(s["unit_id"]), s["kind"]): s.get("spectral_kl")
        for s in manifest["stimuli"]
        if s["kind"] in ("mei", "natural")
    }


def neuron_table(summary: dict, manifest: dict) -> str:
    rows = [row(NEURON_COLUMNS, "th")]
    kl = spectral_kl(manifest)
    for n in summary["neurons"]:
        controls = n["control_responses"]
        rows.append(
            row(
                [
                    n["unit_id"],
                    number(n["mei_response"]),
                    number(controls.get("natural")),
                    number(controls.get("natural_masked")),
                    ", ".join(number(v) for v in n["dei_responses"]) or "–",
                    number(n["mei_over_best_natural"]),
                    number(n["t"]),
                    number(n["p"], 2),
                    "yes" if n["mei_beats_controls"] else "no",
                    number(n["predicted_mei"]),
                    number(kl.get((str(n["unit_id"]), "mei")), 2),
                    number(kl.get((str(n["unit_id"]), "natural")), 2),
                ]
            )
        )
    return f"<table>{''.join(rows)}</table>"


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
.numbers td:first-child { text-align: left; }
.clips img { max-width: 260px; margin: 0.2em; }
"""


def day2_numbers(day2: dict) -> list[tuple[str, str]]:
    """Report rows of a loop shown on day 2 (twin.loop.run.found_again)."""

    def microns(values):
        return ", ".join(f"{v:+.1f}" for v in values) + " µm"

    return [
        ("day 2: selected neurons found again", f"{day2['found_again']} of {day2['selected']}"),
        (
            "day 2: of those, matched to the right cell / selected still imaged (simulation's truth)",
            f"{day2['found_correctly']} / {day2['still_imaged']}",
        ),
        ("day 2: field-of-view shift, estimated (true)", f"{microns(day2['shift_um'])} ({microns(day2['true_shift_um'])})"),
        (
            "day 2: units matched, precision / recall (simulation's truth)",
            f"{day2['matched_units']}, {number(day2['match_precision'])} / {number(day2['match_recall'])}",
        ),
        ("day 2: neurons below", "the selected neurons found again, their MEIs and controls measured on day 2"),
    ]


def write_report(folder: Path, summary: dict, manifest: dict, stimuli: Path, run: Path) -> Path:
    """Write the PNGs and index.html into ``folder``; returns the html path."""
    figures = []
    if plot_fit_curves(read_metrics(run), folder / "fit_curves.png"):
        figures.append(("Fit of the twin", folder / "fit_curves.png"))
    plot_prediction_scatter(summary, folder / "prediction_scatter.png")
    plot_mei_grid(summary, manifest, stimuli, folder / "mei_grid.png")
    plot_response_bars(summary, folder / "responses_bar.png")
    figures += [
        ("Measured responses: MEI vs controls", folder / "responses_bar.png"),
        ("Twin prediction vs measured response", folder / "prediction_scatter.png"),
        ("Stimuli", folder / "mei_grid.png"),
    ]
    target = manifest["target"]
    lost = summary["units_without_responses"]
    numbers = [
        ("neurons", summary["n_neurons"]),
        ("median MEI / best natural image (measured)", number(summary["median_mei_over_best_natural"])),
        ("fraction of MEIs beating controls, p < 0.05", number(summary["fraction_mei_beats_controls_p05"])),
        ("prediction correlation (twin vs measured)", number(summary["prediction_correlation"])),
        ("median spectral KL from the natural images: MEIs / natural controls", spectral_text(manifest)),
        ("stimuli shown / rejected at export", f"{len(manifest['stimuli'])} / {len(manifest['rejected'])}"),
        ("units without responses (lost on the rig)", ", ".join(map(str, lost)) or "none"),
        ("repeats per stimulus", manifest["repeats"]),
        (
            f"target mean luminance / RMS contrast ({matching_text(target)})",
            f"{luminance_text(target['mean_luminance'])} / {luminance_text(target['rms_contrast'])} cd/m²",
        ),
        ("run", run),
        ("stimuli", stimuli),
    ]
    if "day2" in summary:
        numbers[:0] = day2_numbers(summary["day2"])
    body = [
        "<h1>Inception loop report</h1>",
        '<table class="numbers">' + "".join(row(pair) for pair in numbers) + "</table>",
    ]
    for title, path in figures:
        body += [f"<h2>{text(title)}</h2>", embed(path)]
    if is_clip_manifest(manifest):
        body += ["<h2>Clips</h2>", clip_section(summary, manifest, stimuli, folder)]
    body += ["<h2>Per neuron</h2>", neuron_table(summary, manifest)]
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>twin: inception loop</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    (folder / "index.html").write_text(page, encoding="utf-8")
    return folder / "index.html"
