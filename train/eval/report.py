"""Evaluation reports: one JSON (summary, settings, per-item rows) and one Markdown file per task."""

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list]


@dataclass
class TaskReport:
    task: str
    summary: dict  # the headline numbers
    rows: list[dict] = field(default_factory=list)  # one per item: inputs, replies, verdicts
    tables: list[Table] = field(default_factory=list)  # what the Markdown shows
    meta: dict = field(default_factory=dict)  # endpoints, settings, HTTP counters

    def to_json(self) -> dict:
        return {"task": self.task, "summary": self.summary, "meta": self.meta, "rows": self.rows}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(report: TaskReport) -> str:
    lines = [f"# {report.task}", ""]
    for table in report.tables:
        lines += [f"## {table.title}", "", "| " + " | ".join(table.headers) + " |",
                  "|" + "---|" * len(table.headers)]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
        lines.append("")
    if report.meta:
        lines += ["## Settings", "", "```json", json.dumps(report.meta, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def write_report(report: TaskReport, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{report.task}.json", out_dir / f"{report.task}.md"
    text = json.dumps(report.to_json(), indent=1, ensure_ascii=False, default=str)
    json_path.write_text(text, encoding="utf-8")
    md_path.write_text(markdown(report), encoding="utf-8")
    return json_path, md_path
