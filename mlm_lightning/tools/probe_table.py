"""The probe's table: Markdown for the terminal and the run folder, JSON or CSV for ``--output``."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

COLUMNS = (
    "model",
    "mode",
    "runs",
    "accuracy",
    "accuracy_std",
    "macro_f1",
    "macro_f1_std",
    "accuracy_diff",
    "accuracy_diff_low",
    "accuracy_diff_high",
    "macro_f1_diff",
    "macro_f1_diff_low",
    "macro_f1_diff_high",
)


def _pm(row: dict[str, Any], metric: str) -> str:
    return f"{100 * row[metric]:.2f} ± {100 * row[f'{metric}_std']:.2f}"


def _diff(row: dict[str, Any], metric: str) -> str:
    if math.isnan(row[f"{metric}_diff"]):
        return "(reference)"
    low, high = row[f"{metric}_diff_low"], row[f"{metric}_diff_high"]
    bounds = "n/a" if math.isnan(low) else f"{100 * low:+.2f}, {100 * high:+.2f}"
    return f"{100 * row[f'{metric}_diff']:+.2f} [{bounds}]"


def format_table(rows: list[dict[str, Any]], task_name: str = "") -> str:
    """The rows as a Markdown table: figures in percent, mean ± std, paired differences with their 95 % interval."""
    mode, runs = (rows[0]["mode"], rows[0]["runs"]) if rows else ("", 0)
    what = f"probe{f' {task_name}' if task_name else ''}, {mode}, {runs} runs"
    lines = [
        f"{what}: accuracy and macro-F1 in %, mean ± std over runs; difference from the first model, paired by "
        "run, with its 95 % interval",
        "",
        "| model | accuracy | macro-F1 | accuracy difference | macro-F1 difference |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        cells = [_pm(row, "accuracy"), _pm(row, "macro_f1"), _diff(row, "accuracy"), _diff(row, "macro_f1")]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plain(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def output_text(rows: list[dict[str, Any]], path: Path) -> str:
    """The rows as JSON (a list of objects, ``null`` for no value) or CSV (empty cell for no value)."""
    if path.suffix.lower() == ".json":
        return json.dumps([{k: plain(v) for k, v in row.items()} for row in rows], indent=1) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if plain(v) is None else v for k, v in row.items()} for row in rows])
    return buffer.getvalue()


def write_output(rows: list[dict[str, Any]], path: Path) -> None:
    """Writes the table atomically (a complete file or none)."""
    from mlm_lightning.io.atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(output_text(rows, path), encoding="utf-8")
