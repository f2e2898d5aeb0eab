"""Regenerate the result tables of the READMEs from committed ``summary.json`` (and generated ``.md``) files.

Usage: ``python -m sop_plugin.bench.results.tables`` (rewrite the tables in place) or ``--check`` (exit 1
and name every table that differs from what would be generated).

Why: typed numbers drift from the runs and bold marks drift from the statistics. Each table sits
between ``<!-- table:NAME begin ... -->`` and ``<!-- table:NAME end -->`` in one of :data:`DOCS`;
:data:`TABLES` says which ``summary.json`` and which columns NAME shows. ``summary.json`` (written
by ``python -m sop_plugin.bench.results.summary``) stays the single source: nothing here computes
statistics (a ``file`` table copies the last table of a markdown file a command wrote, e.g.
``bench_protocol.md``), and a number is bold only where its verdicts say ahead of every other method
(never with one seed: one seed has no interval, so its verdicts are all "level").
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sop_plugin.bench.results import markdown

ROOT = Path(__file__).resolve().parents[3]
#: the pages with generated tables, relative to the repository root
DOCS = ("README.md", "docs/results/README.md", "docs/results/cross-host/README.md")

Kind = Literal["results", "verdicts", "control_gaps", "timing", "file"]

#: ``profile=standard`` at the shipped defaults, every seed run so far
STANDARD = "docs/results/standard/summary.json"
#: ``profile=quick`` (``make bench``) at the shipped defaults
QUICK = "docs/results/quick/summary.json"
#: ``profile=long`` (``standard`` with 6 epochs; seed 0 ran as ``profile=standard train.epochs=6``)
LONG = "docs/results/long/summary.json"
#: ``profile=standard`` before the per-method recipes: one shared setting, no evaluation suite
SHARED = "docs/results/shared-settings/summary.json"
#: solo-learn against the bench, scored by ``python -m sop_plugin.solo.bench_protocol``
CROSS_HOST = "docs/results/cross-host/{}/bench_protocol.md"

#: the columns of the results tables (the suite's few-shot too: its controls are in the runs)
STANDARD_KEYS = (
    "knn_top1",
    "linear_top1",
    "finetune_top1",
    "fewshot_top1.1pct",
    "fewshot_top1.10pct",
    "seg_miou",
    "map_at_r",
    "corrupt_knn_top1",
    "collapse.head_erank",
)
#: the README's shorter version of those columns
README_KEYS = tuple(k for k in STANDARD_KEYS if k not in ("map_at_r", "corrupt_knn_top1"))
#: the metrics whose verdicts the README shows; the results page shows all of :data:`VERDICT_KEYS`
README_VERDICT_KEYS = ("knn_top1", "linear_top1", "finetune_top1", "seg_miou")
#: the control gaps the README shows: the raw-pixel kNN floor and the random-init backbone fine-tuned
README_CONTROL_KEYS = ("knn_top1", "finetune_top1")
#: the runs before the evaluation suite: no fine-tuning, few-shot, segmentation or controls
SHARED_KEYS = ("knn_top1", "linear_top1", "map_at_r", "recall_at_1", "corrupt_knn_top1", "knn_top1_subset")
VERDICT_KEYS = (*STANDARD_KEYS[:-1], "recall_at_1")
#: the collapse statistics at the end of training (docs/evaluation.md, "Collapse diagnostics")
COLLAPSE_KEYS = (
    "collapse.head_erank",
    "collapse.head_knn_cos",
    "collapse.backbone_erank",
    "collapse.backbone_knn_cos",
    "collapse.memory_erank",
    "collapse.memory_knn_cos",
)
#: headers for the keys that :func:`markdown.label` shows as they are
HEADERS = {
    "collapse.head_knn_cos": "head 8-NN cos",
    "collapse.backbone_erank": "backbone eff. rank",
    "collapse.backbone_knn_cos": "backbone 8-NN cos",
    "collapse.memory_erank": "SOP class memory eff. rank",
    "collapse.memory_knn_cos": "SOP class memory 8-NN cos",
}


@dataclass(frozen=True)
class Table:
    """One generated table: its ``summary.json``, what it shows, and extra method rows from other summaries.

    ``keys``: the columns of a results table, the metrics of a verdict table, the metrics a control-gap
    table keeps (all when empty); unused by a timing table.
    """

    source: str
    kind: Kind
    keys: tuple[str, ...] = ()
    #: (row label, summary.json, method): a method from another summary, shown without bold
    extra: tuple[tuple[str, str, str], ...] = field(default_factory=tuple)


TABLES: dict[str, Table] = {
    "readme-standard": Table(STANDARD, "results", README_KEYS),
    "readme-standard-verdicts": Table(STANDARD, "verdicts", README_VERDICT_KEYS),
    "readme-standard-controls": Table(STANDARD, "control_gaps", README_CONTROL_KEYS),
    "readme-quick": Table(QUICK, "results", README_KEYS),
    "readme-long": Table(LONG, "results", README_KEYS),
    "readme-long-verdicts": Table(LONG, "verdicts", README_VERDICT_KEYS),
    "readme-long-controls": Table(LONG, "control_gaps", ("knn_top1",)),
    "standard": Table(STANDARD, "results", STANDARD_KEYS),
    "standard-verdicts": Table(STANDARD, "verdicts", VERDICT_KEYS),
    "standard-controls": Table(STANDARD, "control_gaps"),
    "standard-collapse": Table(STANDARD, "results", COLLAPSE_KEYS),
    "standard-timing": Table(STANDARD, "timing"),
    "quick": Table(QUICK, "results", STANDARD_KEYS),
    "long": Table(LONG, "results", STANDARD_KEYS),
    "long-verdicts": Table(LONG, "verdicts", VERDICT_KEYS),
    "long-controls": Table(LONG, "control_gaps"),
    "long-collapse": Table(LONG, "results", COLLAPSE_KEYS),
    "shared-settings": Table(SHARED, "results", SHARED_KEYS),
    "shared-settings-verdicts": Table(SHARED, "verdicts", SHARED_KEYS[:-1]),
    **{f"cross-host-{run}": Table(CROSS_HOST.format(run), "file") for run in ("standard", "solo-learn")},
}

BLOCK = re.compile(r"<!-- table:(?P<name>[\w-]+) begin[^>]*-->\n.*?<!-- table:(?P=name) end -->", re.DOTALL)
TOOL = "`python -m sop_plugin.bench.results.tables`"


def _load(path: str, root: Path) -> dict[str, Any]:
    return json.loads((root / path).read_text())


def _header(keys: tuple[str, ...]) -> str:
    """The header row of a results table, with :data:`HEADERS` where markdown has no label."""
    return "| | " + " | ".join(HEADERS.get(k, markdown.label(k)) for k in keys) + " | seeds |"


def _last_table(text: str) -> list[str]:
    """The lines of the last markdown table in ``text``."""
    blocks = [b.splitlines() for b in text.strip().split("\n\n")]
    tables = [b for b in blocks if b and all(line.startswith("|") for line in b)]
    if not tables:
        raise ValueError("no markdown table in the file")
    return tables[-1]


def _lines(spec: Table, root: Path) -> list[str]:
    if spec.kind == "file":
        return _last_table((root / spec.source).read_text())
    summary = _load(spec.source, root)
    if spec.kind == "results":
        extra = [(label, _load(src, root)["methods"][m]) for label, src, m in spec.extra]
        lines = markdown.results_table(summary, spec.keys, extra)
        return [_header(spec.keys), *lines[1:]]
    if spec.kind == "verdicts":
        return markdown.verdict_table(summary, spec.keys)
    if spec.kind == "timing":
        return markdown.timing_table(summary)
    if spec.keys:
        gaps = {
            m: {c: {k: p for k, p in metrics.items() if k in spec.keys} for c, metrics in controls.items()}
            for m, controls in summary.get("control_gaps", {}).items()
        }
        summary = summary | {"control_gaps": gaps}
    return markdown.control_gap_table(summary)


def render(name: str, root: Path = ROOT) -> str:
    """The whole block of table ``name``, markers included."""
    spec = TABLES[name]
    lines = _lines(spec, root)
    sources = ", ".join(dict.fromkeys([spec.source, *(src for _, src, _ in spec.extra)]))
    begin = f"<!-- table:{name} begin: generated by {TOOL} from {sources} -->"
    # blank lines around the table: markdown renderers then never read a marker as a table row
    return "\n".join([begin, "", *lines, "", f"<!-- table:{name} end -->"])


def regenerate(text: str, root: Path = ROOT) -> str:
    """``text`` with every marked table replaced by its generated block; ``KeyError`` for an unknown name."""
    names = [m.group("name") for m in BLOCK.finditer(text)]
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise KeyError(f"no table spec for {unknown} (known: {sorted(TABLES)})")
    return BLOCK.sub(lambda m: render(m.group("name"), root), text)


def stale(root: Path = ROOT) -> list[str]:
    """``PAGE: table NAME`` for every generated table that differs from its committed text."""
    found = []
    for page in DOCS:
        text = (root / page).read_text()
        for m in BLOCK.finditer(text):
            if m.group(0) != render(m.group("name"), root):
                found.append(f"{page}: table {m.group('name')}")
    return found


def main(argv: list[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    if args.check:
        differing = stale()
        for line in differing:
            print(f"stale: {line}")
        raise SystemExit(1 if differing else 0)
    for page in DOCS:
        path = ROOT / page
        text = path.read_text()
        new = regenerate(text)
        if new != text:
            path.write_text(new)
            print(f"rewrote tables in {page}")


if __name__ == "__main__":
    main()
