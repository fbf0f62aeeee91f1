"""Reading evaluation inputs: a JSON list, a JSON object of records, or JSON lines."""

import json
from pathlib import Path


class InputError(ValueError):
    """Bad evaluation input; the message names the file and the record."""


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, record) pairs; ``where`` is ``file:line`` or ``file[key]`` for error messages."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")) and not _looks_like_jsonl(stripped):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            raise InputError(f"{path}: not valid JSON: {exc.msg} at {where}") from exc
        if isinstance(data, dict) and not all(isinstance(v, dict) for v in data.values()):
            data = [data]  # one record on one line
        if not isinstance(data, (dict, list)):
            raise InputError(f"{path}: expected a list or an object of records")
        items = data.items() if isinstance(data, dict) else enumerate(data)
        rows = [(f"{path.name}[{k}]", v) for k, v in items]
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path.name}:{n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path.name}:{n}: not valid JSON: {exc.msg}") from exc
    for where, row in rows:
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return rows


def _looks_like_jsonl(text: str) -> bool:
    first = text.split("\n", 1)[0].strip()
    if not first.startswith("{") or "\n" not in text.strip():
        return False
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True
