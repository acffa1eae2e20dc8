"""Files that come back from the rig are untrusted: the manifest, the stimulus files, responses.npz.

Each test copies one exported stimulus folder (test_loop_closeloop's) and tampers with it.
"""

import csv
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from test_loop_closeloop import make_loop_files

from twin.cli import main
from twin.errors import RunError, StimulusError, TwinWarning
from twin.loop.closeloop import closeloop
from twin.loop.export import CSV_FIELDS
from twin.loop.files import read_manifest
from twin.loop.report import write_report
from twin.loop.respond import load_shown_images, respond_to_stimuli

PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "table", "tbody", "tr", "td", "th", "img"}
SCRIPT = "<script>document.title='PWNED'</script>"
IMAGE = "<img src=x onerror=\"document.title='PWNED'\">"  # no slash: it can name a file or folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    make_loop_files(root)
    return root


@pytest.fixture
def loop(exported, tmp_path):
    """A fresh copy: (run, stimulus folder, responses.npz, report folder to write)."""
    root = tmp_path / "loop"
    shutil.copytree(exported, root)
    return root / "run", root / "stimuli", root / "responses.npz", root / "report"


def load(stimuli):
    return json.loads((stimuli / "manifest.json").read_text())


def write_manifest(stimuli, manifest):
    """manifest.json and a manifest.csv that agrees with it, as `twin export` writes them."""
    (stimuli / "manifest.json").write_text(json.dumps(manifest))
    with open(stimuli / "manifest.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for trial, sid in enumerate(manifest["order"]):
            row = manifest["stimuli"][sid] | {"trial": trial, "repeat": trial // len(manifest["stimuli"])}
            writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_FIELDS})


def refused(loop, message, error=StimulusError):
    """closeloop raises one line matching ``message`` and writes nothing."""
    run, stimuli, responses, report = loop
    with pytest.raises(error, match=message) as caught:
        closeloop(run, stimuli, responses, report)
    assert "\n" not in str(caught.value)
    assert not report.exists()
    assert [p.name for p in report.parent.iterdir() if p.name.startswith(".")] == []
    return str(caught.value)


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, page):
        super().__init__()
        self.tags, self.text = [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def assert_inert(page):
    """Only the report's own elements; no script, no event handler, images only embedded PNGs."""
    elements = Elements(page)
    assert {tag for tag, _ in elements.tags} <= PAGE_TAGS
    for tag, attrs in elements.tags:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
    return "".join(elements.text)


# ---------------------------------------------------------------------------- stimulus paths


@pytest.fixture
def outside_png(tmp_path):
    """A real image outside the stimulus folder, which a manifest must not be able to reach."""
    path = tmp_path / "outside.png"
    Image.fromarray(np.full((16, 32), 200, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("name", ["../../outside.png", "ABSOLUTE", "../../../../../../../../etc/passwd", "LINK"])
def test_file_names_leaving_the_folder_are_refused(loop, outside_png, name):
    stimuli = loop[1]
    if name == "ABSOLUTE":
        name = str(outside_png)
    if name == "LINK":
        (stimuli / "stimuli" / "link.png").symlink_to(outside_png)
        name = "stimuli/link.png"
    manifest = load(stimuli)
    manifest["stimuli"][2]["file"] = name
    write_manifest(stimuli, manifest)
    message = refused(loop, "manifest.json: stimulus 2: file .* lies outside .*; name an image inside the stimulus")
    assert repr(name) in message


def test_every_reader_of_stimulus_files_checks_the_path(loop, outside_png, tmp_path):
    run, stimuli, responses, _ = loop
    manifest = load(stimuli)
    summary = closeloop(run, stimuli, responses, tmp_path / "good")
    manifest["stimuli"][0]["file"] = "../../outside.png"  # unit 11's MEI, drawn in the report's grid
    write_manifest(stimuli, manifest)
    with pytest.raises(StimulusError, match="stimulus 0: file '../../outside.png' lies outside"):
        read_manifest(stimuli)
    with pytest.raises(StimulusError, match="stimulus 0: file '../../outside.png' lies outside"):
        respond_to_stimuli(stimuli, animal=tmp_path / "animal.zarr", out=tmp_path / "r.npz")
    assert not (tmp_path / "r.npz").exists()
    with pytest.raises(StimulusError, match="stimulus 0: file '../../outside.png' lies outside"):
        load_shown_images(stimuli, manifest, (4, 8))
    (tmp_path / "page").mkdir()
    with pytest.raises(StimulusError, match="stimulus 0: file '../../outside.png' lies outside"):
        write_report(tmp_path / "page", summary, manifest, stimuli, run)


def test_links_and_subfolders_inside_the_folder_are_fine(loop, tmp_path):
    stimuli = loop[1]
    manifest = load(stimuli)
    (stimuli / "stimuli" / "again.png").symlink_to(stimuli / "stimuli" / "0000_mei_u11.png")
    manifest["stimuli"][0]["file"] = "stimuli/again.png"
    manifest["stimuli"][1]["file"] = "./stimuli/../stimuli/0001_natural_u11.png"
    write_manifest(stimuli, manifest)
    linked = tmp_path / "linked"  # the stimulus folder itself may be a link
    linked.symlink_to(stimuli)
    assert closeloop(loop[0], linked, loop[2], loop[3])["n_neurons"] == 4


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("stimuli", None, "file 'stimuli' is missing or not a file"),
        ("", None, "file '' is missing or not a file"),
        ("stimuli/gone.png", None, "file 'stimuli/gone.png' is missing or not a file"),
        ("stimuli/text.png", b"not an image", "file 'stimuli/text.png' is not a readable image"),
        ("stimuli/cut.png", "HALF", "file 'stimuli/cut.png' is not a readable image"),
        ("stimuli/a\x00b.png", None, "file 'stimuli/a\\\\x00b.png' lies outside"),
        ("stimuli/rgb.png", Image.new("RGB", (32, 16)), "file 'stimuli/rgb.png' is a 16x32 image of mode RGB"),
        ("stimuli/small.png", Image.new("L", (10, 10)), "file 'stimuli/small.png' is a 10x10 image of mode L"),
    ],
)
def test_stimulus_files_that_are_not_images(loop, name, content, message):
    stimuli = loop[1]
    if content == "HALF":
        whole = (stimuli / "stimuli" / "0000_mei_u11.png").read_bytes()
        content = whole[: len(whole) // 2]
    if isinstance(content, Image.Image):
        content.save(stimuli / name)
    elif content is not None:
        (stimuli / name).write_bytes(content)
    manifest = load(stimuli)
    manifest["stimuli"][0]["file"] = name
    write_manifest(stimuli, manifest)
    refused(loop, f"manifest.json: stimulus 0: {message}")


# ---------------------------------------------------------------------------- the report is inert


FIELDS = ["unit_id", "kind", "file", "meis", "run", "store", "notes", "repeats", "seed"]


@pytest.mark.parametrize(
    "field, payload", [(f, p) for f in FIELDS for p in (SCRIPT, IMAGE) if not (f == "file" and "/" in p)]
)
def test_markup_in_manifest_fields_never_reaches_the_page(loop, field, payload):
    """Hostile strings are refused where the field has a type, and stay text where it is free."""
    run, stimuli, responses, report = loop
    manifest = load(stimuli)
    target = manifest["stimuli"][0] if field in ("unit_id", "kind", "file") else manifest
    if field == "file":  # a real image under a hostile name, inside the folder
        shutil.copy(stimuli / target["file"], stimuli / "stimuli" / payload)
        payload = f"stimuli/{payload}"
    target[field] = payload
    write_manifest(stimuli, manifest)
    try:
        closeloop(run, stimuli, responses, report)
    except StimulusError as error:
        assert "\n" not in str(error) and not report.exists()
        return
    assert field in ("file", "meis", "run", "store")  # free text the loop never puts into the page
    assert_inert((report / "index.html").read_text())


def hostile_report(loop, tmp_path):
    """write_report on values that bypass the manifest checks: markup in unit ids, in the repeats
    and in the folder names that the page shows."""
    run, stimuli, responses, _ = loop
    summary = closeloop(run, stimuli, responses, tmp_path / "plain")
    for n, neuron in enumerate(summary["neurons"]):
        neuron["unit_id"] = [SCRIPT, IMAGE][n % 2]
    summary["units_without_responses"] = [SCRIPT]
    manifest = load(stimuli) | {"repeats": IMAGE}
    folder = tmp_path / IMAGE
    shutil.copytree(stimuli, folder)
    out = tmp_path / "page"
    out.mkdir()
    return write_report(out, summary, manifest, folder, run)


def test_report_escapes_every_value(loop, tmp_path):
    text = assert_inert(hostile_report(loop, tmp_path).read_text())
    assert SCRIPT in text and IMAGE in text  # shown, as text


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(page, tmp_path):
    """The DOM of ``page`` after Chromium ran its scripts (and image error handlers)."""
    done = subprocess.run(
        [chromium(), "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=2000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(chromium() is None, reason="no chromium or chromium-browser on PATH to render the report")
def test_report_in_a_browser_runs_no_injected_code(loop, tmp_path):
    # the check itself works: the same payloads, unescaped, do run in this browser
    control = tmp_path / "control.html"
    control.write_text(f"<html><head><title>twin: inception loop</title></head><body>{SCRIPT}{IMAGE}</body></html>")
    assert "<title>PWNED</title>" in dump_dom(control, tmp_path)

    dom = dump_dom(hostile_report(loop, tmp_path), tmp_path)
    elements = Elements(dom)
    assert re.search("<title>(.*?)</title>", dom).group(1) == "twin: inception loop"
    assert {tag for tag, _ in elements.tags} <= PAGE_TAGS
    assert not [attrs for _, attrs in elements.tags if any(name.startswith("on") for name in attrs)]
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in dom


# ---------------------------------------------------------------------------- manifest fields


def edit(stimuli, change):
    manifest = load(stimuli)
    change(manifest)
    (stimuli / "manifest.json").write_text(json.dumps(manifest))


def setter(*keys_and_value):
    *keys, key, value = keys_and_value

    def change(manifest):
        target = manifest
        for k in keys:
            target = target[k]
        target[key] = value

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["stimuli"][0].pop("kind"), "stimulus 0: field 'kind' is missing; export the stimuli again"),
        (lambda m: m["stimuli"][0].update(unitid=m["stimuli"][0].pop("unit_id")),
         "stimulus 0: unknown field 'unitid'; rename it to 'unit_id'"),
        (setter("notes", "shown on rig 2"), "manifest.json: unknown field 'notes'; remove it"),
        (lambda m: m.pop("monitor"), "manifest.json: field 'monitor' is missing"),
        (setter("monitor", "a", "80"), "monitor: field 'a' is '80', not a number > 0"),
        (lambda m: m["monitor"].pop("gamma"), "monitor: field 'gamma' is missing"),
        (setter("stimuli", 0, "kind", "grating"),
         "stimulus 0: field 'kind' is 'grating', not one of mei, dei, natural, natural_masked"),
        (setter("stimuli", 0, "unit_id", SCRIPT), "field 'unit_id' holds integers for some stimuli and strings for others"),
        (setter("stimuli", 0, "unit_id", ""), "stimulus 0: field 'unit_id' is '', not an integer or a non-empty string"),
        (setter("stimuli", 0, "unit_id", 10**30), "field 'unit_id' is 1000000000000000000000000000000, not an integer or a"),
        (setter("stimuli", 0, "unit_id", True), "field 'unit_id' is True, not an integer or a"),
        (setter("stimuli", 3, "mean_luminance", float("nan")), "stimulus 3: field 'mean_luminance' is nan, not a"),
        (setter("stimuli", 3, "predicted_response", float("inf")), "field 'predicted_response' is inf, not a finite"),
        (setter("stimuli", 3, "predicted_response", 1e300), "'predicted_response' is 1e\\+300, not a finite number"),
        (setter("target", "mean_luminance", float("nan")), "target: field 'mean_luminance' is nan, not a number > 0"),
        (setter("stimuli", 1, "file", 7), "stimulus 1: field 'file' is 7, not a string"),
        (setter("stimuli", 4, "seed", -1), "field 'seed' is -1, not an integer >= 0 or null"),
        (setter("repeats", SCRIPT), "field 'repeats' is \"<script>.*, not an integer >= 1"),
        (setter("screen_shape", [16]), "field 'screen_shape' is \\[16\\], not \\[height, width\\]"),
        (setter("session", -1), "field 'session' is -1, not an integer >= 0"),
        (setter("stimuli", "all"), "field 'stimuli' is 'all', not a list"),
        (setter("stimuli", []), "field 'stimuli' is empty"),
        (setter("stimuli", 2, 5), "stimulus 2 is 5, not an object"),
        (setter("stimuli", 2, "stimulus_id", 5), "stimulus 2: field 'stimulus_id' is 5; ids number the stimuli 0, 1"),
        (setter("stimuli", 1, "kind", "mei"), "stimulus 1: unit 11 already has a 'mei' stimulus \\(stimulus 0\\)"),
        (setter("order", []), "field 'order' is empty"),
        (setter("order", 0, 12), "field 'order' holds 12, not a stimulus id 0..11"),
        (setter("order", 0, "3"), "field 'order' holds '3', not a stimulus id"),
    ],
)
def test_manifest_fields_are_checked(loop, change, message):
    edit(loop[1], change)
    assert refused(loop, message).startswith(str(loop[1] / "manifest.json"))


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(b"\xff\xfe{", "not UTF-8 text \\(byte 0\\)", id="latin"),
        pytest.param(b"", "not valid JSON", id="empty"),
        pytest.param(b"[1, 2]", "holds \\[1, 2\\], not a JSON object", id="list"),
        pytest.param(b"[" * 100_000, "not valid JSON", id="deep"),
        pytest.param(b'{"session": 1, "session": 0}', "not valid JSON \\(key 'session' appears twice\\)", id="twice"),
        pytest.param(b'{"seed": 1' + b"0" * 5000 + b"}", "not valid JSON", id="long-integer"),
        pytest.param("DIRECTORY", "cannot be read \\(Is a directory\\)", id="directory"),
    ],
)
def test_unreadable_manifests(loop, content, message):
    path = loop[1] / "manifest.json"
    path.unlink()
    if content == "DIRECTORY":
        path.mkdir()
    else:
        path.write_bytes(content)
    refused(loop, f"manifest.json: {message}")


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("file", "stimuli/other.png", "line 2: file 'stimuli/other.png' disagrees with manifest.json"),
        ("unit_id", "999", "line 2: unit_id '999' disagrees with manifest.json"),
        ("kind", "mei ", "line 2: kind 'mei ' disagrees with manifest.json"),
        ("stimulus_id", "99", "line 2: stimulus_id '99' is not a stimulus of manifest.json"),
        ("stimulus_id", "1_0", "line 2: stimulus_id '1_0' is not a stimulus of manifest.json"),
    ],
)
def test_hand_edited_csv_must_agree_with_the_json(loop, column, value, message):
    path = loop[1] / "manifest.csv"
    rows = list(csv.DictReader(path.open()))
    rows[0][column] = value
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    refused(loop, f"manifest.csv: {message}")


def test_unreadable_csv(loop):
    path = loop[1] / "manifest.csv"
    path.write_bytes(b"trial,stimulus_id\n0,\xff\n")
    refused(loop, "manifest.csv: not UTF-8 text")
    path.unlink()
    path.mkdir()
    refused(loop, "manifest.csv: cannot be read")


# ---------------------------------------------------------------------------- responses.npz


def test_cut_and_empty_responses(loop):
    path = loop[2]
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    refused(loop, "responses.npz: not a readable .npz file .*; save it with np.savez")
    path.write_bytes(b"")
    refused(loop, "responses.npz: not a readable .npz file .*; save it with np.savez")
    with open(path, "wb") as file:
        np.save(file, np.zeros((3, 3)))
    refused(loop, "responses.npz: holds one array, not named arrays")
    path.unlink()
    path.mkdir()
    refused(loop, "responses.npz: no such file")


def test_responses_whose_header_claims_terabytes(loop):
    """A responses array whose .npy header claims 10^12 values but holds 16 bytes."""
    path = loop[2]
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 3000)})
    with np.load(path) as file:
        arrays = dict(file)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("responses.npy", header.getvalue() + bytes(16))
        for key in ("stimulus_id", "unit_id"):
            member = io.BytesIO()
            np.save(member, arrays[key])
            archive.writestr(f"{key}.npy", member.getvalue())
    refused(loop, "responses.npz: variable 'responses' (is larger than this machine's memory|cannot be read)")


class Payload:
    """Unpickling this creates a file: the proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickles_in_responses_never_run(loop, tmp_path):
    path = loop[2]
    marker = tmp_path / "pickle-ran"
    with np.load(path) as file:
        arrays = dict(file)
    np.savez(path, **arrays | {"unit_id": np.array([Payload(marker)] * 5, dtype=object)})
    refused(loop, "responses.npz: variable 'unit_id' is an object array")
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as file:  # the payload is real
        file["unit_id"]
    assert marker.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a | {"responses": a["responses"].astype(str)}, "responses has dtype <U\\d+; write real numbers"),
        (lambda a: a | {"responses": a["responses"].astype(complex)}, "responses has dtype complex128"),
        (lambda a: a | {"responses": a["responses"].astype(float) * 1e300}, "responses reach .*e\\+300, beyond"),
        (lambda a: a | {"responses": a["responses"][:0], "stimulus_id": a["stimulus_id"][:0]},
         "responses has shape \\(0, 5\\), no trials or no neurons"),
        (lambda a: a | {"unit_id": a["unit_id"].astype(float)}, "unit_id has dtype float64; write integer or string unit ids"),
        (lambda a: a | {"unit_id": a["unit_id"].astype(str)}, "unit_id holds strings but the run's session has integer ids"),
    ],
)
def test_responses_of_the_wrong_kind(loop, change, message):
    path = loop[2]
    with np.load(path) as file:
        arrays = dict(file)
    np.savez(path, **change(arrays))
    refused(loop, f"responses.npz: {message}")


def test_a_neuron_lost_on_the_rig_is_reported(loop):
    run, stimuli, path, report = loop
    with np.load(path) as file:
        arrays = dict(file)
    keep = arrays["unit_id"] != 14
    np.savez(path, **arrays | {"responses": arrays["responses"][:, keep], "unit_id": arrays["unit_id"][keep]})
    lost = "responses.npz: 1 units with stimuli have no responses and are left out: unit_id 14$"
    with pytest.warns(TwinWarning, match=lost):
        summary = closeloop(run, stimuli, path, report)
    assert summary["units_without_responses"] == [14]
    assert [n["unit_id"] for n in summary["neurons"]] == [11, 12, 13]
    assert json.loads((report / "summary.json").read_text()) == summary
    assert "units without responses (lost on the rig)14" in assert_inert((report / "index.html").read_text())


def test_lost_neuron_warning_is_one_line_from_the_cli(loop, capsys):
    run, stimuli, path, report = loop
    with np.load(path) as file:
        arrays = dict(file)
    keep = ~np.isin(arrays["unit_id"], [12, 14])
    np.savez(path, **arrays | {"responses": arrays["responses"][:, keep], "unit_id": arrays["unit_id"][keep]})
    assert main(["closeloop", str(run), str(stimuli), str(path), "--out", str(report)]) == 0
    err = capsys.readouterr().err
    lost = "2 units with stimuli have no responses and are left out: unit_id 12, 14"
    assert err == f"twin closeloop: warning: {path}: {lost}\n"


def test_broken_run_files(loop):
    run = loop[0]
    (run / "metrics.jsonl").write_text('{"epoch": 0, "loss": 1.0}\n{"epoch": 1, "lo')
    refused(loop, "metrics.jsonl: line 2 is not a JSON object; delete the line", RunError)
    records = json.loads((run / "sessions.json").read_text())
    (run / "sessions.json").write_text(json.dumps([records[0] | {"unit_id": []}]))
    refused(loop, "sessions.json: session 0 has no list of integer or string unit_id", RunError)
    (run / "sessions.json").write_text("[{}]")
    refused(loop, "sessions.json: not a list of session records with channels, has_positions", RunError)
    (run / "sessions.json").write_text("{")
    refused(loop, "sessions.json: not valid JSON", RunError)


# ---------------------------------------------------------------------------- output into a closed pipe


def test_output_into_a_closed_pipe_ends_quietly(loop):
    run, stimuli, responses, report = loop
    child = subprocess.Popen(
        [sys.executable, "-m", "twin.cli", "closeloop", str(run), str(stimuli), str(responses), "--out", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    child.stdout.close()  # the reader went away before the first line, as `| head -0` would
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err
