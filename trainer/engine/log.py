"""Run logs: one JSON object a line (``metrics.jsonl``) and the same rows as ``metrics.csv``.

Rows are flat dicts of scalars (``step``, ``epoch``, ``lr``, losses, throughput ...). The CSV's
columns are the union of keys seen; when a new key appears the CSV is rewritten from the JSONL, so
both files always agree. On resume, rows after the resumed step (written by the killed run after
its last checkpoint) are dropped so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class JsonlLogger:
    """Append-only metrics log in ``out_dir`` (create it on rank 0 only)."""

    def __init__(self, out_dir: str | Path, resume_step: int | None = None, name: str = "metrics") -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / f"{name}.jsonl"
        self.csv = self.dir / f"{name}.csv"
        rows = read_jsonl(self.jsonl) if resume_step is not None else []
        rows = [r for r in rows if int(r.get("step", 0)) <= (resume_step or 0)]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        self.columns: list[str] = []
        self._rewrite_csv(rows)

    def log(self, row: dict[str, Any]) -> None:
        """Append one row to both files."""
        row = {k: _scalar(v) for k, v in row.items()}
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if any(k not in self.columns for k in row):
            self._rewrite_csv(read_jsonl(self.jsonl))
            return
        with self.csv.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(row)

    def rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.jsonl)

    def _rewrite_csv(self, rows: list[dict[str, Any]]) -> None:
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
        self.columns = cols
        with self.csv.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            if cols:
                w.writeheader()
            w.writerows(rows)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file (missing file -> []; a torn last line from a kill is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _scalar(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v
