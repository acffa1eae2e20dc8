"""Store digests: what a zarr store held when it was written, and checks that it still does.

``write_digest`` runs once the data of a store is written. It records, for each array, its chunk
files (key -> [size in bytes, blake2b-128 of the bytes as written]), a hash of the store's zarr
metadata (every ``zarr.json``, as canonical JSON) and one content digest over both. The digest is
kept in the store itself as the attributes of the empty zarr group ``twin_digest`` (zarr and
xarray pass over a group; a plain file would make zarr warn on every open). It is written last,
so a store without it was written before twin kept digests, or never completed.

Two checks use it: ``check_digest`` on every open (a stat per chunk and a reread of the metadata,
no chunk data read) and ``verify_store`` for ``twin info --check`` (every chunk hashed and decoded
through zarr). Session stores also carry zarr's CRC32C codec, so a chunk damaged after writing
fails its checksum when read; ``damaged_chunk`` finds which one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import zarr

from twin.errors import SessionError

DIGEST_GROUP = "twin_digest"
ALGORITHM = "blake2b-128"
FIX = "restore the store from its source or write it again (twin import, twin simulate or twin mei)"
# Problems ``verify_store`` reports at most.
MAX_PROBLEMS = 10


def blake2b(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def short(digest: str | None) -> str:
    """The first 12 hex digits of a content digest, or "none"."""
    return digest[:12] if digest else "none"


def layout(store: Path, chunks: bool = True) -> tuple[list[str], dict[str, list[str]]]:
    """(metadata files, {array: chunk keys}) of ``store``; paths relative to it with "/".

    The digest group and files outside zarr arrays (e.g. a marker file) are left out; with
    ``chunks=False`` the chunk folders are not listed (every array gets []).
    """
    metadata, arrays = [], {}
    for folder, subfolders, files in os.walk(store):
        relative = Path(folder).relative_to(store).as_posix()
        if relative == DIGEST_GROUP:
            subfolders.clear()
            continue
        if "zarr.json" not in files:
            continue
        name = "" if relative == "." else relative
        metadata.append(f"{name}/zarr.json".lstrip("/"))
        node = read_json(Path(folder) / "zarr.json")
        if node.get("node_type") == "array":
            arrays[name] = chunk_keys(Path(folder)) if chunks else []
            subfolders.clear()
    return sorted(metadata), arrays


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise SessionError(f"{path}: zarr metadata is not valid JSON ({error}); {FIX}") from None


def chunk_keys(array: Path) -> list[str]:
    """Keys (relative paths, e.g. "c/0/0") of the chunk files of the zarr array folder ``array``."""
    keys = []
    for folder, _, files in os.walk(array):
        for file in files:
            key = (Path(folder) / file).relative_to(array).as_posix()
            if key != "zarr.json":
                keys.append(key)
    return sorted(keys)


def metadata_hash(store: Path, files: list[str]) -> str:
    """blake2b of every metadata file of ``store`` as canonical JSON (key order and spacing do
    not count)."""
    hasher = hashlib.blake2b(digest_size=16)
    for name in files:
        canonical = json.dumps(read_json(store / name), sort_keys=True, separators=(",", ":"))
        hasher.update(f"{name}\n{canonical}\n".encode())
    return hasher.hexdigest()


def content_hash(metadata: str, arrays: dict[str, dict[str, list]]) -> str:
    """The content digest: blake2b over the metadata hash and every chunk's key, size and hash."""
    lines = [metadata] + [
        f"{name}/{key} {size} {checksum}"
        for name in sorted(arrays)
        for key, (size, checksum) in sorted(arrays[name].items())
    ]
    return blake2b("\n".join(lines).encode())


def compute_digest(store) -> dict:
    """The digest of ``store`` as it is on disk now (reads every chunk file).

    {"algorithm", "metadata": hash, "arrays": {array: {chunk key: [size, hash]}}, "content"}.
    """
    store = Path(store)
    files, keys = layout(store)
    arrays = {}
    for name, chunk_names in keys.items():
        folder = store / name
        arrays[name] = {}
        for key in chunk_names:
            data = (folder / key).read_bytes()
            arrays[name][key] = [len(data), blake2b(data)]
    metadata = metadata_hash(store, files)
    return {
        "algorithm": ALGORITHM,
        "metadata": metadata,
        "arrays": arrays,
        "content": content_hash(metadata, arrays),
    }


def write_digest(store) -> str:
    """Compute the digest of the finished ``store`` and write it into the store; returns the
    content digest."""
    store = Path(store)
    digest = compute_digest(store)
    group = store / DIGEST_GROUP
    group.mkdir(exist_ok=True)
    node = {"zarr_format": 3, "node_type": "group", "attributes": {"twin_digest": digest}}
    (group / "zarr.json").write_text(json.dumps(node))
    return digest["content"]


def read_digest(store) -> dict | None:
    """The digest recorded in ``store``, or None when it has none."""
    path = Path(store) / DIGEST_GROUP / "zarr.json"
    if not path.is_file():
        return None
    try:
        digest = json.loads(path.read_text())["attributes"]["twin_digest"]
        if digest["algorithm"] != ALGORITHM:
            raise ValueError(f"unknown algorithm {digest['algorithm']!r}")
        return digest
    except (ValueError, KeyError, TypeError) as error:
        raise SessionError(f"{path}: the store's digest cannot be read ({error}); {FIX}") from None


def content_digest(store) -> str | None:
    """The content digest recorded in ``store`` (hex), or None when it has none."""
    digest = read_digest(store)
    return None if digest is None else digest["content"]


def check_digest(store) -> dict | None:
    """Cheap check that ``store`` still holds what its digest lists: every chunk file exists with
    its recorded size (one stat each, no data read) and the metadata hash matches. Returns the
    digest (None for a store without one); SessionError naming the array and chunk otherwise."""
    store = Path(store)
    digest = read_digest(store)
    if digest is None:
        return None
    for name, chunks in digest["arrays"].items():
        if not (store / name / "zarr.json").is_file():
            raise SessionError(f"{store}: array {name!r} has lost its zarr.json (its metadata); {FIX}")
        for key, (size, _) in chunks.items():
            try:
                found = os.stat(store / name / key).st_size
            except FileNotFoundError:
                raise SessionError(f"{store}: array {name!r} chunk {key} is missing; {FIX}") from None
            if found != size:
                raise SessionError(
                    f"{store}: array {name!r} chunk {key} has {found} bytes but was written with"
                    f" {size} (truncated or replaced); {FIX}"
                )
    if metadata_hash(store, layout(store, chunks=False)[0]) != digest["metadata"]:
        raise SessionError(f"{store}: zarr metadata (zarr.json) changed since the store was written; {FIX}")
    return digest


def array_chunks(array: zarr.Array):
    """(chunk key, block index) of every chunk of ``array``."""
    for index in np.ndindex(*array.cdata_shape):
        yield array.metadata.encode_chunk_key(index), index


def decode_problems(store: Path, limit: int = MAX_PROBLEMS) -> list[str]:
    """"array 'x' chunk c/0/0 <what is wrong>" for the first chunks of ``store`` that zarr
    cannot decode."""
    try:
        group = zarr.open_group(store, mode="r")
    except Exception as error:  # zarr raises many kinds for damaged metadata
        return [f"zarr cannot open the store ({error})"]
    problems = []
    for name, array in sorted(group.arrays()):
        for key, index in array_chunks(array):
            try:
                array.blocks[index]
            except Exception as error:  # codecs raise ValueError, RuntimeError, ...
                problems.append(f"array {name!r} chunk {key} {describe(error)}")
                if len(problems) >= limit:
                    return problems
    return problems


def describe(error: Exception) -> str:
    text = str(error)
    if "checksum" in text.lower():
        return "fails its CRC32C checksum"
    return f"cannot be decoded ({type(error).__name__}: {text.splitlines()[0] if text else ''})"


def damaged_chunk(store) -> str | None:
    """"array 'x' chunk c/0/0 <what is wrong>" for the first chunk of ``store`` that cannot be
    read, or None when every chunk reads."""
    problems = decode_problems(Path(store), limit=1)
    return problems[0] if problems else None


def digest_problems(store: Path, digest: dict, files: list[str], keys: dict[str, list[str]]) -> list[str]:
    """What differs between ``store`` on disk (its ``layout``: metadata ``files``, chunk ``keys``)
    and its ``digest``; hashes every chunk file."""
    problems = []
    if metadata_hash(store, files) != digest["metadata"]:
        problems.append("zarr metadata (zarr.json) changed since the store was written")
    for name, chunks in digest["arrays"].items():
        on_disk = set(keys.get(name, []))
        for key, (size, checksum) in chunks.items():
            if key not in on_disk:
                problems.append(f"array {name!r} chunk {key} is missing")
                continue
            data = (store / name / key).read_bytes()
            if len(data) != size:
                problems.append(f"array {name!r} chunk {key} has {len(data)} bytes, written with {size}")
            elif blake2b(data) != checksum:
                problems.append(f"array {name!r} chunk {key} differs from its digest (damaged)")
        extra = sorted(on_disk - set(chunks))
        problems += [f"array {name!r} chunk {key} is not in the digest" for key in extra]
    extra = sorted(set(keys) - set(digest["arrays"]))
    problems += [f"array {name!r} is not in the digest" for name in extra]
    return problems


def verify_store(store) -> dict:
    """Full check of ``store``: every chunk hashed and compared with the digest, every chunk
    decoded through zarr (its CRC32C checked where the store has one).

    Returns {"store", "digest": content digest or None, "arrays", "chunks",
    "problems": ["array 'x' chunk c/0/0 ...", ...] (the first MAX_PROBLEMS)}.
    """
    store = Path(store)
    if not (store / "zarr.json").is_file():
        raise SessionError(f"{store}: no zarr store here; check the path")
    digest = read_digest(store)
    files, keys = layout(store)
    problems = [] if digest is None else digest_problems(store, digest, files, keys)
    problems += decode_problems(store)
    return {
        "store": str(store),
        "digest": None if digest is None else digest["content"],
        "arrays": len(keys),
        "chunks": sum(len(k) for k in keys.values()),
        "problems": problems[:MAX_PROBLEMS],
    }


def format_check(report: dict) -> str:
    """``verify_store``'s report as text: one line when the store is fine, else one per problem."""
    where = report["store"]
    counted = f"{report['arrays']} arrays, {report['chunks']} chunks"
    if report["problems"]:
        return "\n".join(
            [f"{where}: DAMAGED ({counted}, digest {short(report['digest'])}); {FIX}"]
            + [f"  {problem}" for problem in report["problems"]]
        )
    if report["digest"] is None:
        return f"{where}: no digest (written before twin kept digests); {counted}, every chunk decodes"
    return f"{where}: OK ({counted}, digest {short(report['digest'])}, every chunk matches and decodes)"


def format_digest(digest: str | None) -> str:
    """The ``twin info`` line about a store's digest."""
    if digest is None:
        return "digest       none (written before twin kept store digests)"
    return f"digest       {short(digest)} (twin info --check verifies every chunk against it)"
