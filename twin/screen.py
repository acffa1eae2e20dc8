"""`twin screen`: stream an image collection of any size through a run's twin and keep, per
neuron, the top-K and bottom-K images (or crops) with their responses, and a histogram of all
its responses.

Images come from folders or .zip files of image files, .npy arrays (memory-mapped), zarr arrays
or session stores (twin.data.sources), each read a block at a time, never whole. With ``crops``
every image is cut into windows of HxW source pixels at ``stride`` (offsets (y, x) from the top
left); without, each image is one crop. Crops are brought to the run's size and normalized as
``twin predict`` prepares images (twin.predict.run_size and normalize) by a background thread,
``QUEUE`` batches ahead of the device. Each batch, split over the devices of the data mesh
(twin.distributed), runs one jitted step that predicts the neurons' responses and merges them
into the running top-K and bottom-K (jax.lax.top_k over the kept K and the batch) and into the
histogram counts; only the crops' stream positions travel back. At the end the winning crops are
read again from their sources for their pixels.

Responses: behavior and pupil center at their train means, as in ``twin predict``; with
``masks`` (neuron, y, x) each neuron sees every crop masked as the masks module shows an image
(normalized units: mask * image), the Walker mask of its MEI. Few neurons (at most
WINDOW_NEURONS), and masked screening, read each (crop, neuron) pair on its own: a Twin then runs
its core on the neuron's receptive-field window only (Twin.target_responses).

The histogram has BINS bins between geometric edges HISTOGRAM_RANGE in the model's output units
(responses / the session's response std): the first bin also counts responses below it, the last
those above. The store keeps everything in the recording's response units (twin.predict.
recording_units). Each kept crop has its naturalness (twin.naturalness: the spectral KL from the
run's train images), and ``<out stem>.png`` shows the best crops of the first neurons.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
from array import array
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from twin import distributed
from twin.errors import ConfigError, SessionError
from twin.predict import normalize, recording_units, resampled_note, run_size

TOP = 16
MAX_TOP = 10_000  # images kept per neuron at each end: their pixels are all written to the store
BINS = 256
HISTOGRAM_RANGE = (1e-2, 1e2)
WINDOW_NEURONS = 4
MAX_PAIRS = 4096  # (crop, neuron) pairs per call when pairs are read on their own
QUEUE = 4
MAX_CROPS = 2**31 - 1  # stream positions are int32 on the device
FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of the MEI's activation, for the summary
GRID_NEURONS, GRID_RANKS = 16, 4  # the PNG beside the store: best crops of the first neurons


@dataclasses.dataclass(frozen=True)
class Crops:
    """Windows cut from each image: ``size`` (height, width) in source pixels, None for the
    whole image; ``stride`` pixels between windows."""

    size: tuple[int, int] | None = None
    stride: int = 1

    def offsets(self, shape: tuple[int, int]) -> np.ndarray:
        """(m, 2) top-left (y, x) of every window in an image of ``shape`` (y, x); m may be 0."""
        if self.size is None:
            return np.zeros((1, 2), np.int64)
        (height, width), (y, x) = self.size, shape
        ys, xs = np.arange(0, y - height + 1, self.stride), np.arange(0, x - width + 1, self.stride)
        return np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)

    def cut(self, image: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
        """The windows of ``image`` ((y, x) or (channel, y, x)) at ``offsets`` (m, 2)."""
        if self.size is None:
            return [image]
        height, width = self.size
        return [image[..., y : y + height, x : x + width] for y, x in offsets]


@dataclasses.dataclass
class Screened:
    """What a screen found, in the model's output units: top / bottom values (neuron, K), best
    first / worst first, and their crops' stream positions (neuron, K); histogram counts (neuron,
    BINS) over ``edges`` (BINS + 1,); the number of crops of each image (image,); seconds of
    streaming, of them ``first_seconds`` for the first batch (which compiles the step), and the
    batch size."""

    top_value: np.ndarray
    top_id: np.ndarray
    bottom_value: np.ndarray
    bottom_id: np.ndarray
    counts: np.ndarray
    edges: np.ndarray
    image_crops: np.ndarray
    seconds: float
    first_seconds: float
    batch: int

    @property
    def n_crops(self) -> int:
        return int(self.image_crops.sum())


def make_respond(model, session: int, data, index: np.ndarray, masks, batch: int):
    """(respond, state): respond(state, images (b, y, x, c) normalized) -> (b, k) responses of
    neurons ``index`` (k,) in the model's output units (see the module doc for masks and pairs)."""
    from twin.mei.optimize import apply_model, neuron_objective, split_model
    from twin.models.twin import Twin

    graphdef, state, stacked = split_model(model)
    fixed = {name: v for name, v in data.train_means().items() if v is not None}
    neurons = jnp.asarray(index, jnp.int32)
    k = len(index)
    if masks is None and not (isinstance(model, Twin) and k <= WINDOW_NEURONS):

        def respond(state, images):
            extra = {name: jnp.broadcast_to(v, (len(images), len(v))) for name, v in fixed.items()}
            return apply_model(graphdef, state, stacked, lambda m: m(images, session, neurons=neurons, **extra))

        return respond, state
    objective = neuron_objective(session, **fixed)
    chunk = min(k, max(1, MAX_PAIRS // batch))
    n_chunks = -(-k // chunk)
    padded = jnp.concatenate([neurons, jnp.zeros(n_chunks * chunk - k, jnp.int32)]).reshape(n_chunks, chunk)
    shape = data.image_shape
    masks = jnp.ones((k, *shape)) if masks is None else jnp.asarray(masks, jnp.float32)
    masks = jnp.concatenate([masks, jnp.zeros((n_chunks * chunk - k, *shape))]).reshape(n_chunks, chunk, *shape)

    def respond(state, images):
        # The engine's layout: (b, y, x), or (b, channel, y, x) for several channels.
        engine = images[..., 0] if images.shape[-1] == 1 else jnp.moveaxis(images, -1, 1)
        b = len(images)

        def part(args):
            chunk_neurons, chunk_masks = args
            channel_axes = (slice(None), None) + (None,) * (engine.ndim - 3)
            pairs = (engine[None] * chunk_masks[channel_axes]).reshape(-1, *engine.shape[1:])
            targets = {"neuron": jnp.repeat(chunk_neurons, b)}
            values = apply_model(graphdef, state, stacked, lambda m: objective(m, pairs, targets))
            return values.reshape(chunk, b)

        return jax.lax.map(part, (padded, masks)).reshape(-1, b)[:k].T

    return respond, state


def merge(values, ids, new_values, new_ids, top: int):
    """The ``top`` largest of the kept ``values`` (k, top) and ``new_values`` (k, b), with their ids."""
    joined = jnp.concatenate([values, new_values], axis=1)
    joined_ids = jnp.concatenate([ids, jnp.broadcast_to(new_ids, new_values.shape)], axis=1)
    kept, where = jax.lax.top_k(joined, top)
    return kept, jnp.take_along_axis(joined_ids, where, axis=1)


def make_step(respond, edges: np.ndarray, top: int):
    """The jitted step (state, carry, images (b, y, x, c), ids (b,), valid (b,)) -> carry: the
    batch's responses merged into the running top / bottom and histogram of ``carry``."""
    edges = jnp.asarray(edges, jnp.float32)

    def step(state, carry, images, ids, valid):
        responses = respond(state, images).T  # (k, b)
        top_value, top_id = merge(carry["top_value"], carry["top_id"], jnp.where(valid, responses, -jnp.inf), ids, top)
        # The bottom is kept as the top of the negated responses.
        low_value, low_id = merge(carry["low_value"], carry["low_id"], jnp.where(valid, -responses, -jnp.inf), ids, top)
        bins = jnp.clip(jnp.searchsorted(edges, responses, side="right") - 1, 0, len(edges) - 2)
        rows = jnp.arange(len(responses))[:, None]
        counts = carry["counts"].at[rows, bins].add(jnp.broadcast_to(valid, bins.shape).astype(jnp.int32))
        return {"top_value": top_value, "top_id": top_id, "low_value": low_value, "low_id": low_id, "counts": counts}

    return jax.jit(step, donate_argnums=1)


def empty_carry(k: int, top: int) -> dict:
    minus = np.full((k, top), -np.inf, np.float32)
    none = np.full((k, top), -1, np.int32)
    counts = np.zeros((k, BINS), np.int32)
    return {"top_value": minus, "top_id": none, "low_value": minus, "low_id": none, "counts": counts}


class Reader:
    """Batches of normalized crops (b, y, x, c) from ``sources``, prepared by a background thread:
    (images, ids (b,) int32 stream positions, valid (b,) bool; the last batch padded). Records
    the number of crops of each image (``image_crops``) and of resampled crops."""

    def __init__(self, sources, data, crops: Crops, batch: int):
        self.sources, self.data, self.crops, self.batch = sources, data, crops, batch
        self.image_crops = array("q")
        self.resampled = 0
        self.queue = queue.Queue(QUEUE)
        self.stop = threading.Event()

    def __iter__(self):
        thread = threading.Thread(target=self.produce, daemon=True)
        thread.start()
        try:
            while (item := self.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stop.set()
            thread.join()

    def put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce(self) -> None:
        try:
            self.read_all()
            self.put(None)
        except BaseException as error:  # handed to the consumer, which raises it
            self.put(error)

    def read_all(self) -> None:
        pending, count, first = [], 0, 0
        for source in self.sources:
            for start in range(0, len(source), self.batch):
                for image in source.block(start, min(start + self.batch, len(source))):
                    if self.stop.is_set():
                        return
                    offsets = self.crops.offsets(image.shape[-2:])
                    self.image_crops.append(len(offsets))
                    if not len(offsets):
                        continue
                    pixels, resampled = run_size(self.crops.cut(image, offsets), self.data, source.path)
                    self.resampled += resampled
                    pending.append(normalize(pixels, self.data))
                    count += len(pixels)
                    while count >= self.batch:
                        joined = np.concatenate(pending)
                        self.put(self.batch_of(joined[: self.batch], first))
                        first += self.batch
                        pending, count = [joined[self.batch :]], count - self.batch
        if count:
            self.put(self.batch_of(np.concatenate(pending), first))

    def batch_of(self, images: np.ndarray, first: int) -> tuple:
        if first + self.batch > MAX_CROPS:
            raise ConfigError(
                f"{self.sources[0].path}: more than {MAX_CROPS:,} crops in one screen; screen the"
                " collection in parts, or with fewer crops (a larger --stride)"
            )
        n = len(images)
        padded = np.concatenate([images, np.zeros((self.batch - n, *images.shape[1:]), np.float32)])
        return padded, np.arange(first, first + self.batch, dtype=np.int32), np.arange(self.batch) < n


def screen(model, session: int, data, sources, index, *, top=TOP, crops=Crops(), batch=128, masks=None) -> Screened:
    """Screen ``sources`` (twin.data.sources) through readout ``session`` of ``model`` (eval mode)
    with SessionData ``data``, for neurons ``index`` (k,); masks (k, y, x) or None. The batch is
    rounded up to a multiple of the device count."""
    mesh = distributed.data_mesh()
    batch = -(-batch // mesh.devices.size) * mesh.devices.size
    respond, state = make_respond(model, session, data, np.asarray(index), masks, batch)
    edges = np.geomspace(*HISTOGRAM_RANGE, BINS + 1).astype(np.float32)
    step = make_step(respond, edges, top)
    state = distributed.replicate(state, mesh)
    carry = distributed.replicate(empty_carry(len(index), top), mesh)
    reader = Reader(sources, data, crops, batch)
    start, first = time.perf_counter(), None
    for images, ids, valid in reader:
        carry = step(state, carry, *distributed.shard_batch((images, ids, valid), mesh))
        if first is None:  # the first batch compiles the step
            jax.block_until_ready(carry)
            first = time.perf_counter() - start
    carry = jax.device_get(carry)
    seconds = time.perf_counter() - start
    resampled_note("twin screen", reader.resampled, int(np.sum(reader.image_crops)), data)
    return Screened(
        carry["top_value"], carry["top_id"], -carry["low_value"], carry["low_id"], carry["counts"], edges,
        np.frombuffer(reader.image_crops, np.int64).copy(), seconds, first or 0.0, batch,
    )


def locate(ids: np.ndarray, image_crops: np.ndarray, sources) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stream positions ``ids`` (n,) -> (source index, item within it, crop within the image), each (n,)."""
    starts = np.concatenate([[0], np.cumsum(image_crops)])
    image = np.searchsorted(starts, ids, side="right") - 1
    source_starts = np.concatenate([[0], np.cumsum([len(s) for s in sources])])
    source = np.searchsorted(source_starts, image, side="right") - 1
    return source, image - source_starts[source], ids - starts[image]


def crop_table(ids: np.ndarray, screened: Screened, sources, crops: Crops, data) -> dict:
    """The crops ``ids`` (n,) read again from their sources: pixels (n, [channel,] y, x) in pixel
    levels at the run's size (unmasked), source path, name and offset (n, 2) of each."""
    where = locate(ids, screened.image_crops, sources)
    pixels, source_names, names, offsets = [], [], [], []
    last, image = None, None
    for s, item, crop in zip(*where):
        if (s, item) != last:  # crops of one image come together (ids are sorted)
            last, image = (s, item), sources[s].block(item, item + 1)[0]
        offset = crops.offsets(image.shape[-2:])[crop]
        levels = run_size(crops.cut(image, offset[None]), data, sources[s].path)[0][0]
        pixels.append(levels if levels.ndim == 2 else np.moveaxis(levels, -1, 0))
        source_names.append(str(sources[s].path))
        names.append(sources[s].name(item))
        offsets.append(offset)
    return {
        "crop_pixels": np.stack(pixels).astype(np.float32),
        "crop_source": np.array(source_names, object),
        "crop_name": np.array(names, object),
        "crop_offset": np.stack(offsets).astype(np.int64),
        "crop_id": ids.astype(np.int64),
    }


def mei_values(meis: xr.Dataset, data, index: np.ndarray, session: int, path, run) -> tuple[np.ndarray, np.ndarray]:
    """(activation (k,) in the model's output units, Walker masks (k, y, x)) of the best seed's MEI
    of each neuron ``index`` (k,) of SessionData ``data`` in the MEI store ``meis`` made by ``run``."""
    from twin.data.schema import unit_ids
    from twin.mei.masks import walker_mask

    if "surround" in meis.attrs or "opacity" in meis:
        raise ConfigError(f"--meis {path}: holds surround or transparent images; pass a store of plain MEIs (twin mei)")
    made_by = meis.attrs.get("run")
    if made_by is not None and Path(made_by).resolve() != Path(run).resolve():
        raise ConfigError(f"--meis {path}: attribute run is {made_by!r}, not {run}; pass MEIs made by twin mei {run}")
    if int(meis.attrs.get("session", session)) != session:
        raise ConfigError(f"--meis {path}: holds MEIs of session {meis.attrs['session']}; pass --session to match")
    rows = {u: i for i, u in enumerate(unit_ids(meis["unit_id"].values).tolist())}
    for unit in data.unit_id[index].tolist():
        if unit not in rows:
            raise ConfigError(
                f"--meis {path}: unit {unit!r} has no MEI there; screen the neurons it holds (leave out"
                " --neurons) or run twin mei for this one"
            )
    row = np.array([rows[u] for u in data.unit_id[index].tolist()])
    best = meis["best_seed"].values[row].astype(int)
    pixels = (meis["images"] * meis["image_std"] + meis["image_mean"]).values[row, best]
    if pixels.shape[-2:] != tuple(data.image_shape):
        raise SessionError(
            f"{path}: variable 'images' is {pixels.shape[-2]}x{pixels.shape[-1]} but the run's images are"
            f" {data.image_shape[0]}x{data.image_shape[1]}; pass the MEIs of this run (twin mei)"
        )
    # The mean gray of each channel, as twin export masks natural images.
    mean = meis["image_mean"].mean([d for d in meis["image_mean"].dims if d != "channel"]).values
    mean = mean[:, None, None] if mean.ndim else float(mean)
    masks = np.stack([walker_mask(mei, mean) for mei in pixels]).astype(np.float32)
    return meis["activations"].values[row, best].astype(np.float32), masks


def screen_dataset(
    screened: Screened, top: int, table: dict, data, index: np.ndarray, extra: dict, attrs: dict
) -> xr.Dataset:
    """The screen store (see ``screen_command``) from ``screened``, keeping ``top`` ranks."""

    def units(values):  # (k, ...) model units -> recording units
        flat = values.reshape(len(index), -1)
        return recording_units(flat.T, data, index)[0].T.reshape(values.shape)

    row = {int(i): r for r, i in enumerate(table["crop_id"])}
    crop_dims = ("crop", "y", "x") if table["crop_pixels"].ndim == 3 else ("crop", "channel", "y", "x")
    variables = {
        "unit_id": ("neuron", data.unit_id[index]),
        "neuron_index": ("neuron", index.astype(np.int64)),
        "top_response": (("neuron", "rank"), units(screened.top_value[:, :top])),
        "top_crop": (("neuron", "rank"), np.vectorize(row.get)(screened.top_id[:, :top]).astype(np.int64)),
        "bottom_response": (("neuron", "rank"), units(screened.bottom_value[:, :top])),
        "bottom_crop": (("neuron", "rank"), np.vectorize(row.get)(screened.bottom_id[:, :top]).astype(np.int64)),
        "histogram_edges": (("neuron", "edge"), units(np.broadcast_to(screened.edges, (len(index), BINS + 1)))),
        "histogram_counts": (("neuron", "bin"), screened.counts.astype(np.int64)),
        "crop_pixels": (crop_dims, table["crop_pixels"]),
        **{name: ("crop", table[name]) for name in ("crop_source", "crop_name", "crop_id")},
        "crop_offset": (("crop", "yx"), table["crop_offset"]),
        "crop_spectral_kl": ("crop", table["crop_spectral_kl"]),
    }
    if "mei_activation" in extra:
        variables["mei_activation"] = ("neuron", units(extra["mei_activation"]))
    if "mask" in extra:
        variables["mask"] = (("neuron", "y", "x"), extra["mask"])
    return xr.Dataset(variables, attrs=attrs)


def check_crops(crops: tuple[int, int] | None, stride: int | None, data) -> Crops:
    """The Crops of ``--crops`` HxW and ``--stride`` (default: a quarter of the crop's height)."""
    from twin.predict import ASPECT_TOLERANCE

    if crops is None:
        if stride is not None:
            raise ConfigError(f"--stride {stride}: only goes with --crops HxW; add --crops or leave out --stride")
        return Crops()
    (y, x), (height, width) = crops, data.image_shape
    if abs((y / x) / (height / width) - 1) > ASPECT_TOLERANCE:
        raise ConfigError(
            f"--crops {y}x{x}: the run's images are {height}x{width}; give crops of the aspect ratio"
            f" {height}:{width} (e.g. {2 * height}x{2 * width})"
        )
    return Crops((y, x), stride or max(1, y // 4))


def screen_command(
    run,
    images: list,
    out,
    neurons: str | None = None,
    top: int | None = None,
    crops: tuple[int, int] | None = None,
    stride: int | None = None,
    masked: bool = False,
    meis=None,
    session: int = 0,
    batch_size: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Screen ``images`` (paths: folders, .zip, .npy, zarr arrays or session stores) through
    neurons ``neurons`` (default: all, or those of ``meis``) of readout ``session`` of ``run`` and
    write the screen store ``out`` (.zarr).

    The store: unit_id, neuron_index (neuron,); top_response, bottom_response (neuron, rank) in
    the recording's units, best first / worst first, and top_crop, bottom_crop (neuron, rank)
    indices into the crops; crop_pixels (crop, [channel,] y, x) pixel levels 0..255 at the run's
    size, unmasked; crop_source, crop_name (crop,) the source path and file name (or index);
    crop_offset (crop, yx) the window's top left in the source image (0, 0 for whole images);
    crop_id (crop,) its position in the stream; histogram_edges (neuron, edge), histogram_counts
    (neuron, bin) (see the module doc); with ``meis``: mei_activation (neuron,) and, ``masked``,
    mask (neuron, y, x). attrs: run, session, images, n_images, n_crops, crop_size, stride,
    masked, meis, units, seconds (of streaming), first_batch_seconds (of them, the first batch's,
    which compiles), batch_size, natural_spectral_slope; crop_spectral_kl (crop,). Writes
    ``<out stem>.png`` too (``plot_top_crops``). Returns ``summarize``'s dict.
    """
    out, top = Path(out), top or TOP
    loaded, data, index, crop, sources, extra = prepare_screen(
        run, images, out, neurons, top, crops, stride, masked, meis, session, overwrite
    )
    screened = screen(
        loaded.model, session, data, sources, index, top=top, crops=crop,
        batch=batch_size or loaded.config.data.batch_size, masks=extra.get("mask"),
    )
    if screened.n_crops == 0:
        raise SessionError(
            f"{images[0]}: no image is as large as --crops {crops[0]}x{crops[1]}; pass smaller crops"
        )
    attrs = screen_attrs(run, session, images, screened, crop, masked, meis, data, index)
    write_screen(out, overwrite, screened, min(top, screened.n_crops), sources, crop, data, index, extra, attrs)
    return summarize(out)


def prepare_screen(run, images: list, out: Path, neurons, top: int, crops, stride, masked: bool, meis, session: int,
                   overwrite: bool):
    """Check screen_command's arguments and outputs, then load what it screens with: (the run,
    its SessionData ``session``, the neuron indices, the Crops, the image sources, the MEI
    values: {"mei_activation", and "mask" when ``masked``} or {}). One error line for the first
    problem, before any work."""
    from twin.checkpoint import load_run, read_run_files
    from twin.data.sources import open_source
    from twin.mei.run import parse_neurons
    from twin.mei.store import open_meis
    from twin.outputs import check_output

    if top > MAX_TOP:
        raise ConfigError(f"--top {top}: keeps at most {MAX_TOP:,} images per neuron at each end; give a smaller --top")
    if out.suffix != ".zarr":
        raise ConfigError(f"--out {out}: name the screen store with a .zarr suffix")
    if masked and meis is None:
        raise ConfigError(
            "--masked: the masks come from the neurons' MEIs; pass --meis MEIS.zarr (written by twin mei)"
        )
    stores = [record["path"] for record in read_run_files(Path(run))[1]]
    inputs = [run, *images, *stores, *([meis] if meis else [])]
    check_output(out, overwrite, "store", inputs=inputs)
    check_output(out.with_suffix(".png"), overwrite, "file", inputs=inputs)
    loaded = load_run(run)
    if not 0 <= session < len(loaded.sessions):
        raise ConfigError(f"--session {session}: run {run} has sessions 0..{len(loaded.sessions) - 1}")
    data = loaded.sessions[session]
    mei_store = open_meis(meis) if meis else None
    if neurons is None and mei_store is not None:
        index = np.asarray(mei_store["neuron_index"].values, np.int64)
    else:
        index = parse_neurons("all" if neurons is None else neurons, data.unit_id)
    crop = check_crops(crops, stride, data)
    sources = [open_source(path, data.channels) for path in images]
    extra = {}
    if mei_store is not None:
        extra["mei_activation"], masks = mei_values(mei_store, data, index, session, meis, run)
        if masked:
            extra["mask"] = masks
    return loaded, data, index, crop, sources, extra


def write_screen(out: Path, overwrite: bool, screened: Screened, kept: int, sources, crop, data, index, extra: dict,
                 attrs: dict) -> None:
    """Write the screen store ``out`` (the ``kept`` best and worst crops of each neuron, their
    pixels and naturalness; see screen_command) and its PNG grid."""
    from twin.data.store import write_dataset
    from twin.mei.run import natural_pixels
    from twin.naturalness import naturalness
    from twin.outputs import output

    ids = np.unique(np.concatenate([screened.top_id[:, :kept], screened.bottom_id[:, :kept]]))
    table = crop_table(ids, screened, sources, crop, data)
    spectra = naturalness(table["crop_pixels"], natural_pixels(data))
    table["crop_spectral_kl"] = spectra["spectral_kl"].astype(np.float32)
    attrs["natural_spectral_slope"] = spectra["natural_spectral_slope"]
    ds = screen_dataset(screened, kept, table, data, index, extra, attrs)
    write_dataset(ds, out, overwrite=overwrite)
    with output(out.with_suffix(".png"), overwrite, "file") as grid:
        plot_top_crops(ds, grid)


def plot_top_crops(ds: xr.Dataset, path: Path) -> None:
    """PNG of the best GRID_RANKS crops of the first GRID_NEURONS neurons of the screen store ``ds``
    (one neuron per row), titled with the unit and its response."""
    from twin.data.schema import plot_text, unit_ids
    from twin.mei.run import plot_grid

    neurons = min(ds.sizes["neuron"], GRID_NEURONS)
    ranks = min(ds.sizes["rank"], GRID_RANKS)
    crops = ds["top_crop"].values[:neurons, :ranks]
    responses = ds["top_response"].values[:neurons, :ranks]
    titles = [
        f"unit {plot_text(unit)} #{r + 1}: {responses[i, r]:.3g}"
        for i, unit in enumerate(unit_ids(ds["unit_id"].values[:neurons]).tolist())
        for r in range(ranks)
    ]
    plot_grid(ds["crop_pixels"].values[crops.ravel()], titles, path, columns=ranks)


def screen_attrs(run, session: int, images: list, screened: Screened, crop: Crops, masked: bool, meis, data,
                 index: np.ndarray) -> dict:
    """The screen store's attrs (see ``screen_command``) but natural_spectral_slope."""
    return {
        "created_by": "twin screen",
        "run": str(Path(run).absolute()),
        "session": session,
        "images": json.dumps([str(Path(p).absolute()) for p in images]),
        "n_images": len(screened.image_crops),
        "n_crops": screened.n_crops,
        "crop_size": list(crop.size) if crop.size else [],
        "stride": crop.stride if crop.size else 0,
        "masked": bool(masked),
        "meis": str(Path(meis).absolute()) if meis else "",
        "units": recording_units(np.zeros((1, 1)), data, index[:1])[1],
        "seconds": screened.seconds,
        "first_batch_seconds": screened.first_seconds,
        "batch_size": screened.batch,
    }


def fraction_reaching(counts: np.ndarray, edges: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """(k,) fraction of the responses counted in ``counts`` (k, bins) over ``edges`` (k, bins + 1)
    at or above ``threshold`` (k,); the bin holding the threshold counts in proportion to its
    part above it."""
    lower, upper = edges[:, :-1], edges[:, 1:]
    above = np.clip((upper - threshold[:, None]) / (upper - lower), 0.0, 1.0)
    return (counts * above).sum(1) / np.maximum(counts.sum(1), 1)


def summarize(path) -> dict:
    """{"store", "images", "crops", "neurons", "seconds", "first_batch_seconds", "batch_size",
    "units", "per_neuron": [{"id", "top", "top_crop" (SOURCE:NAME, @Y,X for crops), "bottom",
    "reaching": {fraction: share of crops}}], "median_reaching"} of the
    screen store ``path``; "reaching" (fractions FRACTIONS of the MEI's activation) only when
    the store holds MEI activations."""
    from twin.data.schema import strings, unit_ids
    from twin.data.store import load_values, open_dataset

    ds = open_dataset(path)
    if "histogram_counts" not in ds or "top_response" not in ds:
        raise SessionError(
            f"{path}: variable 'histogram_counts' is missing; this is not a screen store (write one with"
            " twin screen)"
        )
    ds = load_values(ds, path)
    names = [
        f"{Path(source).name}:{name}" + (f"@{y},{x}" if ds.attrs["crop_size"] else "")
        for source, name, (y, x) in zip(
            strings(ds["crop_source"].values), strings(ds["crop_name"].values), ds["crop_offset"].values
        )
    ]
    reaching = {}
    if "mei_activation" in ds:
        counts, edges, mei = (ds[name].values for name in ("histogram_counts", "histogram_edges", "mei_activation"))
        reaching = {f: fraction_reaching(counts, edges, f * mei) for f in FRACTIONS}
    per_neuron = [
        {
            "id": unit,
            "top": float(ds["top_response"].values[i, 0]),
            "top_crop": str(names[ds["top_crop"].values[i, 0]]),
            "bottom": float(ds["bottom_response"].values[i, 0]),
            "top_spectral_kl": float(ds["crop_spectral_kl"].values[ds["top_crop"].values[i, 0]]),
            **({"reaching": {f"{f:g}": float(v[i]) for f, v in reaching.items()}} if reaching else {}),
        }
        for i, unit in enumerate(unit_ids(ds["unit_id"].values).tolist())
    ]
    return {
        "store": str(path),
        "images": int(ds.attrs["n_images"]),
        "crops": int(ds.attrs["n_crops"]),
        "neurons": len(per_neuron),
        "seconds": float(ds.attrs["seconds"]),
        "first_batch_seconds": float(ds.attrs["first_batch_seconds"]),
        "batch_size": int(ds.attrs["batch_size"]),
        "units": ds.attrs["units"],
        "per_neuron": per_neuron,
        "median_reaching": {f"{f:g}": float(np.median(v)) for f, v in reaching.items()},
        "median_top_spectral_kl": float(np.median([n["top_spectral_kl"] for n in per_neuron])),
        "natural_spectral_slope": float(ds.attrs["natural_spectral_slope"]),
    }


def format_summary(summary: dict, shown: int = 10) -> str:
    """A few lines: the counts, the median share of crops reaching each fraction of the MEI, and
    the first ``shown`` neurons' best and worst responses."""
    after = summary["crops"] - summary["batch_size"]
    rate = f"{after / (summary['seconds'] - summary['first_batch_seconds']):,.0f} crops/s after" if after > 0 else "in"
    lines = [
        f"{summary['store']}: {summary['images']:,} images, {summary['crops']:,} crops x {summary['neurons']}"
        f" neurons ({rate} the first batch, which compiled in {summary['first_batch_seconds']:.1f} s)",
        f"  responses in {summary['units']}; median spectral KL of each neuron's best crop from the"
        f" natural images {summary['median_top_spectral_kl']:.2f} (twin.naturalness)",
    ]
    if summary["median_reaching"]:
        shares = ", ".join(f"{float(f):.0%}: {v:.2%}" for f, v in summary["median_reaching"].items())
        lines.append(f"  median share of crops reaching a fraction of the MEI's activation: {shares}")
    for neuron in summary["per_neuron"][:shown]:
        lines.append(
            f"  unit {neuron['id']}: best {neuron['top']:.4g} ({neuron['top_crop']}), worst {neuron['bottom']:.4g}"
        )
    if len(summary["per_neuron"]) > shown:
        lines.append(f"  ... {len(summary['per_neuron']) - shown} more neurons (--json lists all)")
    return "\n".join(lines)
