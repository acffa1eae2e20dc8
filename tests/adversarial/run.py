"""Run the adversarial cases against `twin`, print a table and write RESULTS.md.

    python tests/adversarial/run.py            # every case (a few minutes on 2 cores)
    python tests/adversarial/run.py -k mei     # cases whose name or class contains "mei"
    python tests/adversarial/run.py -k mei,match   # either
    python tests/adversarial/run.py --fast     # the subset that needs no fitted run
    python tests/adversarial/run.py --list     # names, classes and what each expects

Cases run in this process through ``twin.cli.main`` (JAX is imported once); closed-pipe, kill -9,
multi-host and memory-limited cases run ``python -m twin.cli`` in a subprocess. The exit status
is 1 when any case fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fnmatch
import hashlib
import io
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cases import CASES, Case  # noqa: E402
from fixtures import Fixtures  # noqa: E402

HASH_LIMIT = 4 << 20  # bytes: larger files are compared by size and mtime only
HIDDEN_LEFTOVER = ("partial", "tmp", "old")


# ---------------------------------------------------------------------------- snapshots


def snapshot(root: Path) -> dict[str, tuple]:
    """{relative path: (kind, size, mtime_ns, sha1)} of everything under ``root`` (links not followed)."""
    entries: dict[str, tuple] = {}
    if not root.exists():
        return entries
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            try:
                st = path.lstat()
            except OSError:
                continue
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[rel] = ("dir",)
            elif not stat.S_ISREG(st.st_mode):  # a FIFO or device: reading it could block
                entries[rel] = ("special", st.st_mode)
            else:
                digest = ""
                if st.st_size <= HASH_LIMIT:
                    try:
                        digest = hashlib.sha1(path.read_bytes()).hexdigest()
                    except OSError:
                        digest = "unreadable"
                entries[rel] = ("file", st.st_size, st.st_mtime_ns, digest)
    return entries


def matches(path: str, patterns) -> bool:
    """``path`` equals, lies under, or fnmatches one of ``patterns``."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") or fnmatch.fnmatch(path, p) for p in patterns)


def hidden_leftover(path: str) -> bool:
    return any(part.startswith(".") and any(w in part for w in HIDDEN_LEFTOVER) for part in Path(path).parts)


def compare(before: dict, after: dict, allow_changed=(), allow_new=()) -> tuple[list[str], list[str]]:
    """(destroyed: paths changed or removed, left: new paths not allowed or hidden partials)."""
    destroyed = [p for p, e in before.items() if (after.get(p) != e) and not matches(p, allow_changed)]
    destroyed = [p for p in destroyed if not (before[p] == ("dir",) and after.get(p) == ("dir",))]
    left = [p for p in after if p not in before and (hidden_leftover(p) or not matches(p, allow_new))]
    return sorted(destroyed), sorted(left)


def top_level(paths: list[str]) -> list[str]:
    """The shortest paths: a new folder stands for everything in it."""
    out: list[str] = []
    for p in sorted(paths, key=len):
        if not any(p.startswith(q + "/") for q in out):
            out.append(p)
    return sorted(out)


# ---------------------------------------------------------------------------- running one command


class CaseTimeout(BaseException):
    """Raised by SIGALRM when an in-process case runs past its timeout."""


def on_alarm(signum, frame):
    raise CaseTimeout()


@dataclasses.dataclass
class Outcome:
    code: int | str
    stdout: str
    stderr: str
    traceback: bool = False
    problems: list[str] = dataclasses.field(default_factory=list)


def run_inprocess(argv: list[str], cwd: Path, timeout: float) -> Outcome:
    """``twin.cli.main(argv)`` in ``cwd`` with stdout/stderr captured and SystemExit caught.

    The timeout (SIGALRM) stops Python-level loops; a command blocked in a system call (reading a
    FIFO) may not see it, so such cases run in subprocess mode.
    """
    from twin.cli import main

    out, err = io.StringIO(), io.StringIO()
    raised = False
    old = os.getcwd()
    os.chdir(cwd)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # Python's default filters, with each case's warnings shown as in a fresh process.
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            try:
                code = main(list(argv))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
            code = 0 if code is None else code
    except CaseTimeout:
        code = "timeout"
    except BaseException:  # noqa: BLE001 - an escaped exception is what the harness reports
        err.write(traceback.format_exc())
        code, raised = 1, True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(old)
    return Outcome(code, out.getvalue(), err.getvalue(), raised)


def command(argv) -> list[str]:
    return [sys.executable, "-m", "twin.cli", *argv]


def limit_memory(limit: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return set_limit if limit else None


def run_subprocess(case: Case, cwd: Path) -> Outcome:
    try:
        done = subprocess.run(
            command(case.argv), cwd=cwd, capture_output=True, text=True, timeout=case.timeout,
            preexec_fn=limit_memory(case.memory_limit), stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as error:
        return Outcome("timeout", "", (error.stderr or b"").decode(errors="replace") if isinstance(error.stderr, bytes) else (error.stderr or ""))
    return Outcome(done.returncode, done.stdout, done.stderr)


def run_pipe(case: Case, cwd: Path) -> Outcome:
    """stdout is a pipe whose reader is closed before the command starts writing."""
    process = subprocess.Popen(command(case.argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    process.stdout.close()
    try:
        _, err = process.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        return Outcome("timeout", "", err.decode(errors="replace"))
    return Outcome(process.returncode, "", err.decode(errors="replace"))


def run_kill9(case: Case, cwd: Path) -> Outcome:
    """Start the command, SIGKILL it once ``kill_when`` exists, check that only hidden partial
    paths (and ``killed_leaves``) are new, then run ``then`` in-process: it must succeed and clean up."""
    before = snapshot(cwd)
    process = subprocess.Popen(command(case.argv), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.time() + case.timeout
    while time.time() < deadline and process.poll() is None and not list(cwd.glob(case.kill_when)):
        time.sleep(0.002)
    if process.poll() is not None:
        err = process.stderr.read().decode(errors="replace")
        return Outcome("not killed", "", f"the command ended (status {process.returncode}) before {case.kill_when} appeared\n{err}")
    process.kill()
    process.wait()
    process.stderr.close()
    _, new = compare(before, snapshot(cwd), allow_new=case.killed_leaves)
    visible = [p for p in top_level(new) if not hidden_leftover(p)]
    outcome = run_inprocess(list(case.then), cwd, case.timeout)
    if visible:
        outcome.problems.append("after SIGKILL: " + ", ".join(visible[:3]))
    return outcome


# ---------------------------------------------------------------------------- judging


def error_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines as a terminal shows them (after carriage returns), without
    argparse's usage block."""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in stderr.split("\n")]
    lines = [line for line in lines if line]
    if lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if line.startswith("twin")][-1:] or lines
    return lines


@dataclasses.dataclass
class Result:
    case: Case
    code: int | str
    traceback: bool
    one_line: bool
    names: bool
    destroyed: list[str]
    left: list[str]
    problems: list[str]
    seconds: float
    error: str

    @property
    def passed(self) -> bool:
        return not self.problems


def warning_problems(lines: list[str], warns) -> list[str]:
    """A succeeding command's stderr ``lines``: each a one-line `twin CMD: warning:`, and together
    holding every string of ``warns``."""
    other = [line for line in lines if not (line.startswith("twin") and ": warning: " in line)]
    problems = [f"{len(other)} stderr lines besides twin's warnings: {other[0][:120]}"] if other else []
    missing = [w for w in warns if not any(w.lower() in line.lower() for line in lines)]
    if missing:
        problems.append("no warning naming " + ", ".join(missing))
    return problems


def judge(case: Case, outcome: Outcome, destroyed: list[str], left: list[str], cwd: Path, seconds: float) -> Result:
    stderr = outcome.stderr
    has_traceback = outcome.traceback or "Traceback (most recent call last)" in stderr or "Exception ignored" in stderr
    lines = error_lines(stderr)
    error = lines[-1] if lines else ""
    refused = outcome.code == 2
    one_line = (len(lines) == 1 and lines[0].startswith("twin")) if refused else True
    names = all(m.lower() in error.lower() for m in case.mentions) if refused else True
    problems = list(outcome.problems)
    if outcome.code not in case.expect:
        problems.append(f"exit {outcome.code}, expected {' or '.join(map(str, case.expect))}")
    if has_traceback:
        problems.append("traceback: " + (lines[-1] if lines else "?")[:160])
    if not one_line:
        quiet = not lines and outcome.stdout.strip()
        problems.append("refused with a report on stdout and no stderr line" if quiet else f"{len(lines)} stderr lines")
    if not names:
        missing = [m for m in case.mentions if m.lower() not in error.lower()]
        problems.append(f"error does not name {', '.join(missing)}")
    if refused and ("unrecognized arguments" in error or "invalid choice" in error) and not any(m in error for m in case.mentions):
        problems.append("option not implemented")
    if destroyed:
        problems.append("changed/removed: " + ", ".join(top_level(destroyed)[:3]))
    if left:
        problems.append("left behind: " + ", ".join(top_level(left)[:3]))
    if outcome.code == 0 and case.warns is not None:
        problems += warning_problems(lines, case.warns)
    if outcome.code == 0 and case.check is not None and 0 in case.expect:
        problem = case.check(cwd)
        if problem:
            problems.append(problem)
    return Result(case, outcome.code, has_traceback, one_line, names, destroyed, left, problems, seconds, error)


def run_case(case: Case, fx: Fixtures, root: Path) -> Result:
    cwd = root / "cases" / case.name
    cwd.mkdir(parents=True)
    began = time.time()
    try:
        case.setup(cwd, fx)
    except Exception:  # noqa: BLE001 - a broken set-up is reported, not raised
        return Result(case, "setup", False, True, True, [], [], ["set-up failed: " + traceback.format_exc().strip().splitlines()[-1]],
                      time.time() - began, "")
    before, fixtures_before = snapshot(cwd), snapshot(fx.root)
    if case.mode == "inprocess":
        outcome = run_inprocess(list(case.argv), cwd, case.timeout)
    elif case.mode == "subprocess":
        outcome = run_subprocess(case, cwd)
    elif case.mode == "pipe":
        outcome = run_pipe(case, cwd)
    elif case.mode == "kill9":
        outcome = run_kill9(case, cwd)
    else:
        raise ValueError(f"unknown mode {case.mode}")
    destroyed, left = compare(before, snapshot(cwd), case.allow_changed, case.allow_new)
    fixture_damage, _ = compare(fixtures_before, snapshot(fx.root))
    destroyed += ["<fixtures>/" + p for p in fixture_damage]
    for extra in ("/sys/twin-adversarial.zarr", "/sys/twin-adversarial-run"):
        if os.path.lexists(extra):
            left.append(extra)
    return judge(case, outcome, destroyed, left, cwd, time.time() - began)


# ---------------------------------------------------------------------------- report


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def table_rows(results: list[Result]) -> list[list[str]]:
    return [
        [
            r.case.name, r.case.cls, str(r.code), yes(r.traceback), yes(r.one_line), yes(r.names),
            str(len(top_level(r.destroyed))), str(len(top_level(r.left))), "PASS" if r.passed else "FAIL",
            "; ".join(r.problems), r.error[:160],
        ]
        for r in results
    ]


HEADER = ["case", "class", "exit", "traceback", "one line", "names it", "destroyed", "left behind", "result", "why", "last stderr line"]


def markdown(results: list[Result], started: datetime.datetime, seconds: float, selection: str) -> str:
    classes: dict[str, list[int]] = {}
    for r in results:
        counts = classes.setdefault(r.case.cls, [0, 0])
        counts[0] += r.passed
        counts[1] += 1
    passed = sum(r.passed for r in results)
    lines = [
        "# Adversarial harness results",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC, {seconds:.0f} s, {selection}: **{passed} of {len(results)} cases pass**.",
        "Re-run with `bash tests/adversarial/run.sh` (cases: tests/adversarial/cases.py).",
        "",
        "| class | pass | cases |",
        "|---|---|---|",
        *[f"| {cls} | {p} | {n} |" for cls, (p, n) in sorted(classes.items())],
        f"| **all** | **{passed}** | **{len(results)}** |",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for row in table_rows(results):
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def print_table(results: list[Result]) -> None:
    rows = [HEADER[:-2]] + [row[:-2] for row in table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"\nfailing cases ({len(failed)}):")
        for r in failed:
            print(f"  {r.case.cls:16} {r.case.name:40} {'; '.join(r.problems)}")
            if r.error:
                print(f"  {'':16} {'':40} stderr: {r.error[:200]}")


def select(pattern: str | None, fast: bool) -> list[Case]:
    chosen = [c for c in CASES if (not fast or c.fast)]
    if pattern:
        patterns = pattern.split(",")
        chosen = [c for c in chosen if any(p in c.name or p == c.cls for p in patterns)]
    return chosen


def run_cases(cases: list[Case], root: Path, progress=None) -> list[Result]:
    fx = Fixtures(root / "fixtures")
    results = []
    for case in cases:
        result = run_case(case, fx, root)
        results.append(result)
        if progress:
            progress(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Try to break every twin command; print and write the results.")
    parser.add_argument("-k", dest="pattern", help="run cases whose name contains PATTERN (or whose class is PATTERN); several: A,B")
    parser.add_argument("--fast", action="store_true", help="only the cases that need no fitted run")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--keep", action="store_true", help="keep the case folders (path printed at the end)")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"), help="Markdown file to write ('' to skip)")
    args = parser.parse_args(argv)
    cases = select(args.pattern, args.fast)
    if args.list:
        for c in cases:
            expect = " or ".join(map(str, c.expect))
            print(f"{c.name:44} {c.cls:16} exit {expect:10} {'fast ' if c.fast else ''}{c.mode:10} twin {' '.join(c.argv)!r}"
                  + (f"  ({c.note})" if c.note else ""))
        print(f"{len(cases)} cases")
        return 0
    root = Path(tempfile.mkdtemp(prefix="twin-adversarial-"))
    started = datetime.datetime.now(datetime.timezone.utc)
    began = time.time()

    def progress(r: Result) -> None:
        mark = "PASS" if r.passed else "FAIL"
        print(f"{mark} {r.case.cls:16} {r.case.name:44} exit {r.code!s:8} {r.seconds:5.1f} s"
              + ("" if r.passed else "  " + "; ".join(r.problems)), flush=True)

    try:
        results = run_cases(cases, root, progress)
    finally:
        if not args.keep:
            subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.time() - began
    print()
    print_table(results)
    selection = f"cases matching {args.pattern!r}" if args.pattern else ("fast subset" if args.fast else "all cases")
    if args.results:
        Path(args.results).write_text(markdown(results, started, seconds, selection))
    passed = sum(r.passed for r in results)
    print(f"\n{passed} of {len(results)} cases pass ({seconds:.0f} s)" + (f"; results in {args.results}" if args.results else "")
          + (f"; case folders in {root}" if args.keep else ""))
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
