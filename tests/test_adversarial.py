"""The adversarial harness (tests/adversarial): its checks catch what they claim to, and the fast
subset of cases (no fitted run) holds; the full run is marked slow."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "adversarial"))

import run  # noqa: E402
from cases import CASES  # noqa: E402


def test_compare_finds_changed_removed_and_left_paths(tmp_path):
    (tmp_path / "keep.txt").write_text("a")
    (tmp_path / "mine.txt").write_text("b")
    (tmp_path / "gone.txt").write_text("c")
    before = run.snapshot(tmp_path)
    (tmp_path / "mine.txt").write_text("B")
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "out.zarr").mkdir()
    (tmp_path / "out.zarr" / "zarr.json").write_text("{}")
    (tmp_path / ".out.zarr.partial-123").mkdir()
    destroyed, left = run.compare(before, run.snapshot(tmp_path), allow_new=["out.zarr"])
    assert destroyed == ["gone.txt", "mine.txt"]
    assert left == [".out.zarr.partial-123"]
    destroyed, left = run.compare(before, run.snapshot(tmp_path), allow_changed=["mine.txt"])
    assert destroyed == ["gone.txt"] and run.top_level(left) == [".out.zarr.partial-123", "out.zarr"]


def judge(case_name, code, stderr, tmp_path):
    case = next(c for c in CASES if c.name == case_name)
    return run.judge(case, run.Outcome(code, "", stderr), [], [], tmp_path, 0.0)


def test_judge_requires_one_named_error_line(tmp_path):
    good = "twin info: error: nope.zarr: no zarr store here; check the path\n"
    assert judge("info-missing-store", 2, good, tmp_path).passed
    assert not judge("info-missing-store", 1, good, tmp_path).passed
    assert judge("info-missing-store", 2, "warning: x\n" + good, tmp_path).problems == ["2 stderr lines"]
    unnamed = judge("info-missing-store", 2, "twin info: error: no store\n", tmp_path)
    assert unnamed.problems == ["error does not name nope.zarr"]
    usage = "usage: twin [-h] COMMAND ...\n       more\ntwin: error: argument COMMAND: invalid choice: 'fly'\n"
    assert judge("unknown-command", 2, usage, tmp_path).passed
    crashed = judge("info-missing-store", 1, "Traceback (most recent call last):\nValueError: x\n", tmp_path)
    assert crashed.traceback and not crashed.passed


def test_inprocess_runner_reports_escaped_exceptions(tmp_path, monkeypatch):
    import twin.cli

    def broken(argv):
        raise ValueError("boom")

    monkeypatch.setattr(twin.cli, "main", broken)
    outcome = run.run_inprocess(["info", "x"], tmp_path, 10)
    assert outcome.code == 1 and outcome.traceback and "ValueError: boom" in outcome.stderr


def failures(results) -> str:
    return "\n".join(f"{r.case.name}: {'; '.join(r.problems)} [{r.error}]" for r in results if not r.passed)


def test_fast_cases_hold(tmp_path):
    results = run.run_cases([c for c in CASES if c.fast], tmp_path)
    assert len(results) >= 30
    assert all(r.passed for r in results), failures(results)


@pytest.mark.slow
def test_every_case_holds(tmp_path):
    results = run.run_cases(CASES, tmp_path)
    assert all(r.passed for r in results), failures(results)
