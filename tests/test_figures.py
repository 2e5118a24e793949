"""Every measured figure in README.md and docs/ comes from a results file under bench/results/.

A figure is a number with a unit of measure (%, x, images/s, s, min, MiB, ...). Inside a region

    <!-- figures: bench/results/NAME.json -->  ...  <!-- /figures -->

each one must be a value of that results file, as shown (rounded to the digits the document prints; a percentage
may be a fraction in the file, MiB/MB/KiB/GB bytes, min/h seconds). Outside every region a figure must be one of
the few settings, targets and published facts listed in NOT_MEASURED below, each with the reason it is not a
measurement. So a re-measured, hand-edited or stale figure fails here, and the results file names the script,
command, commit and machine behind it.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = ROOT / "bench" / "results"

# A number (thousands separated by commas, optional decimals; a range "91-93" gives two) followed by a unit of
# measure, the unit optionally per something ("12 s/epoch", "40 MB/s"); and any number in scientific notation
# (differences and tolerances). "256 x 8" is arithmetic, not a ratio.
_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_UNIT = (r"%|×|x(?!\s*\d)|images/s|img/s|it/s|MiB|MB|GiB|GB|KiB|KB|kB|ms|seconds?|s|min|minutes|hours?|h|points?|pp"
         r"|times")
FIGURE = re.compile(rf"(?:(?<![\w.\-])([-+−])|(?<![\w.\-+−/]))({_NUMBER})(?:\s?[-–]\s?({_NUMBER}))?\s?({_UNIT})"
                    rf"(?:/[a-z]+)?(?![\w])|(?<![\w.])(\d+(?:\.\d+)?e[-+]?\d+)(?![\w])")
REGION = re.compile(r"<!-- figures: (?P<file>[^ ]+) -->(?P<body>.*?)<!-- /figures -->", re.S)
# How a value stored in a results file may appear in a document, by the unit printed after it.
SCALES: dict[str, tuple[float, ...]] = {
    "%": (1.0, 100.0), "points": (1.0, 100.0), "point": (1.0, 100.0),
    "MiB": (1.0, 1 / 2**20), "KiB": (1.0, 1 / 2**10), "GiB": (1.0, 1 / 2**30),
    "MB": (1.0, 1e-6), "kB": (1.0, 1e-3), "GB": (1.0, 1e-9),
    "min": (1.0, 1 / 60), "minutes": (1.0, 1 / 60), "h": (1.0, 1 / 3600), "hour": (1.0, 1 / 3600),
    "hours": (1.0, 1 / 3600), "ms": (1.0, 1e3),
}

# Figures that are not measurements, by document: settings (defaults, flags), targets, arithmetic on settings, and
# facts published by others (with the publication): {document: {figure as printed: {"why": ..., "count": N}}}, N
# being how often the document prints it outside regions, so a measured figure that happens to print like a listed
# setting is still caught. A measured figure does not belong there but in a results file.
NOT_MEASURED: dict[str, dict[str, dict]] = json.loads(
    (Path(__file__).parent / "fixtures" / "figures_not_measured.json").read_text(encoding="utf-8"))


def figures(text: str) -> list[tuple[str, float, int, str]]:
    """(as printed, value, decimals shown, unit) of every figure in `text`: both ends of a range (printed as the
    range); a number in scientific notation has the unit "e" and, as decimals, the exponent of its last digit."""
    found = []
    for m in FIGURE.finditer(text):
        printed = m.group(0).strip()
        if m.group(5):
            mantissa, _, exponent = m.group(5).partition("e")
            found.append((printed, float(m.group(5)), len(mantissa.partition(".")[2]) - int(exponent), "e"))
            continue
        sign = -1.0 if m.group(1) in ("-", "−") else 1.0
        for k, number in enumerate((m.group(2), m.group(3))):
            if number is not None:  # a sign belongs to the range's first number only
                value = float(number.replace(",", "")) * (sign if k == 0 else 1.0)
                found.append((printed, value, len(number.partition(".")[2]), m.group(4)))
    return found


def leaves(node) -> list[float]:
    """Every number in a results file's figures (nested dicts and lists)."""
    if isinstance(node, bool):
        return []
    if isinstance(node, int | float):
        return [float(node)]
    if isinstance(node, dict):
        return [v for child in node.values() for v in leaves(child)]
    if isinstance(node, list):
        return [v for child in node for v in leaves(child)]
    return []


def shown_as(value: float, decimals: int, unit: str, candidates: list[float]) -> bool:
    """Whether a document's `value` (printed with `decimals` digits) is one of `candidates` as printed."""
    half = 0.5 * 10**-decimals * (1 + 1e-6)
    return any(math.isfinite(c) and abs(c * scale - value) <= half for c in candidates
               for scale in SCALES.get(unit, (1.0,)))


def load_results(name: str) -> dict:
    path = ROOT / name
    assert path.is_file(), f"{name}: no such results file"
    record = json.loads(path.read_text())
    for key in ("script", "command", "commit", "machine", "date", "runs", "figures"):
        assert key in record, f"{name}: no '{key}' (write it with bench/_results.py)"
    return record


def problems(doc: Path) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    name = str(doc.relative_to(ROOT))
    found = []
    for region in REGION.finditer(text):
        candidates = leaves(load_results(region["file"])["figures"])
        for printed, value, decimals, unit in figures(region["body"]):
            if not shown_as(value, decimals, unit, candidates):
                found.append(f"{name}: '{printed}' is not in {region['file']}")
    outside = REGION.sub("", text)
    allowed = NOT_MEASURED.get(name, {})
    printed = Counter(f[0] for f in figures(outside))
    for figure, count in printed.items():
        if figure not in allowed:
            found.append(f"{name}: '{figure}' has no results file (wrap it in a figures region, or drop it)")
        elif not allowed[figure].get("why", "").strip() or allowed[figure].get("count") != count:
            found.append(f"{name}: '{figure}' is printed {count} times, listed as not measured "
                         f"{allowed[figure].get('count')} times (say why each one is not a measurement)")
    found += [f"{name}: '{figure}' is listed as not measured but not printed" for figure in allowed
              if figure not in printed]
    return found


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_every_figure_comes_from_a_results_file(doc: Path) -> None:
    assert problems(doc) == []


def test_regions_open_and_close_and_name_a_committed_file() -> None:
    for doc in DOCUMENTS:
        text = doc.read_text(encoding="utf-8")
        assert text.count("<!-- figures:") == text.count("<!-- /figures -->"), f"{doc.name}: unclosed region"
        for region in REGION.finditer(text):
            assert region["file"].startswith("bench/results/"), f"{doc.name}: {region['file']}"
            load_results(region["file"])


def test_every_results_file_names_a_script_that_exists() -> None:
    for path in sorted(RESULTS.glob("*.json")):
        record = load_results(str(path.relative_to(ROOT)))
        if record["script"] is not None:
            assert (ROOT / record["script"]).is_file(), f"{path.name}: {record['script']} is gone"
        assert record["machine"] and record["runs"] >= 1
        # measured on committed code: a commit that exists, with nothing uncommitted in src/ or bench/
        assert re.fullmatch(r"[0-9a-f]{40}", record["commit"] or ""), f"{path.name}: commit {record['commit']}"


def test_a_figure_edited_by_one_digit_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: a region's figure that differs from its results file in one digit is reported, and so
    is a listed setting printed once more than the list says."""
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "x.json").write_text(json.dumps({"script": None, "command": "", "commit": "abc", "machine": {},
                                                "date": "", "runs": 1, "figures": {"top1": 0.9048,
                                                                                   "bytes": 3_460_000,
                                                                                   "logits": 4.4e-10}}))
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "NOT_MEASURED", {"README.md": {"10%": {"why": "a setting",
                                                                                     "count": 1}}})
    body = "<!-- figures: bench/results/x.json -->top-1 {} at {} MB, {}<!-- /figures --> val {}"
    doc = tmp_path / "README.md"
    for text, bad in ((body.format("90.48%", "3.46", "4.4e-10", "10%"), 0),
                      (body.format("90.49%", "3.46", "4.4e-10", "10%"), 1),
                      (body.format("90.48%", "3.47", "4.4e-10", "10%"), 1),
                      (body.format("90.48%", "3.46", "4.5e-10", "10%"), 1),
                      (body.format("90.5%", "3.5", "4.4e-10", "10%"), 0),
                      (body.format("90.48%", "3.46", "4.4e-10", "10% and 10%"), 1),
                      (body.format("90.48%", "3.46", "4.4e-10", "11%"), 2)):
        doc.write_text(text)
        assert len(problems(doc)) == bad, text


def test_what_counts_as_a_figure() -> None:
    printed = [f[0] for f in figures("91-93% in 12 s/epoch at 40 MB/s; 256 x 10 weights, 3x faster, 1.5e-07; "
                                     "fire2-5, 28x28x1, v1.0, -0.5 points, 20,000 images/s")]
    assert printed == ["91-93%", "91-93%", "12 s/epoch", "40 MB/s", "3x", "1.5e-07", "-0.5 points",
                       "20,000 images/s"]
    assert figures("a loss of -0.84 points")[0][1] == -0.84 and figures("fire2-5%") == []


def test_a_results_file_carries_its_provenance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/_results.py writes the envelope the figures test reads: script, command, commit, the machine read from
    the machine itself, date, runs, spread; atomically (no partial file left beside it)."""
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / "demo.py"), "--json", "x.json"])
    from _results import spread, write_results

    target = write_results(tmp_path / "results" / "x.json", {"top1": [0.5, 0.75]}, runs=2,
                           spreads={"top1": spread([0.5, 0.75])})
    record = json.loads(target.read_text())
    assert record["script"] == "bench/demo.py" and record["command"] == "python bench/demo.py --json x.json"
    assert record["runs"] == 2 and record["spread"]["top1"] == {"min": 0.5, "median": 0.625, "max": 0.75, "runs": 2}
    assert record["machine"]["cores"] >= 1 and record["machine"]["cpu"]
    assert leaves(record["figures"]) == [0.5, 0.75]
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]
    assert write_results(None, {}, runs=1) is None
