"""The generator's append-only JSONL output, keyed by ``<image_id>/<kind>``.

One record per line, written with a single ``write`` and flushed, so a killed run leaves
at most one partial last line; opening the file again cuts that line off (and says so).
Rerunning skips every key already present.
"""

import json
import os
from pathlib import Path
from typing import Self


def record_key(image_id: str, kind: str) -> str:
    return f"{image_id}/{kind}"


class CorruptOutput(ValueError):
    pass


def read_records(path: Path) -> list[dict]:
    """Every complete record of a generator output file (a partial last line is ignored)."""
    path = Path(path)
    records = []
    with path.open("rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    complete = lines[:-1]  # after the last newline: a partial line, or nothing
    for n, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorruptOutput(f"{path}:{n}: not a JSON record ({exc.msg}); was the file edited?") from exc
        if not isinstance(record, dict) or "key" not in record:
            raise CorruptOutput(f"{path}:{n}: a record without a \"key\"")
        records.append(record)
    return records


class RecordLog:
    """``with RecordLog(path) as log: log.done`` (keys present) / ``log.append(record)``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.done: dict[str, str] = {}  # key -> status
        self.repaired_bytes = 0
        self._fd: int | None = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._repair()
            for record in read_records(self.path):
                self.done[record["key"]] = record.get("status", "ok")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self._fd)

    def _repair(self) -> None:
        size = self.path.stat().st_size
        if size == 0:
            return
        with self.path.open("rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            f.truncate(keep)
            self.repaired_bytes = size - keep

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        if written != len(line):
            raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes)")
        self.done[record["key"]] = record.get("status", "ok")
