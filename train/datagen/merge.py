"""Generator output (JSONL, any number of files) -> one LLaVA training JSON, with per-type counts.

Each accepted record becomes ``{"id", "image", "conversations"}``; ``<image>\\n`` is put in
front of the first human turn when the sample has an image. A key seen twice keeps its
first accepted record. Rejected records are counted, not merged.
"""

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from train.builtin.symbolic import KINDS
from train.datagen.store import CorruptOutput, read_records

IMAGE_TOKEN = "<image>"


@dataclass
class MergeStats:
    records: int = 0
    samples: int = 0
    rejected: int = 0
    duplicates: int = 0
    by_kind: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {**vars(self), "by_kind": {k: self.by_kind[k] for k in KINDS if self.by_kind[k]}}


def training_sample(record: dict) -> dict:
    conversations = [dict(turn) for turn in record["conversations"]]
    roles = [turn.get("from") for turn in conversations]
    if not conversations or roles != ["human", "gpt"] * (len(roles) // 2) or len(roles) % 2:
        raise CorruptOutput(f"record {record['key']}: conversations must alternate human/gpt, got {roles}")
    if record.get("image"):
        first = conversations[0]["value"].replace(IMAGE_TOKEN, "").strip()
        conversations[0]["value"] = f"{IMAGE_TOKEN}\n{first}"
    sample = {"id": f"{record['image_id']}-{record['kind']}", "conversations": conversations}
    if record.get("image"):
        sample = {"id": sample["id"], "image": record["image"], "conversations": conversations}
    return sample


def merge(inputs: list[Path], out: Path, *, kinds: tuple[str, ...] = KINDS, shuffle_seed: int | None = None,
          exclude_images: set[str] = frozenset()) -> MergeStats:
    """Write the training JSON to ``out`` (atomically) and return the counts."""
    stats = MergeStats()
    seen: set[str] = set()
    samples = []
    for path in inputs:
        for record in read_records(path):
            stats.records += 1
            if record.get("status") != "ok":
                stats.rejected += 1
                continue
            if record["kind"] not in kinds or record["image_id"] in exclude_images:
                continue
            if record["key"] in seen:
                stats.duplicates += 1
                continue
            seen.add(record["key"])
            samples.append(training_sample(record))
            stats.by_kind[record["kind"]] += 1
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(samples)
    stats.samples = len(samples)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(samples, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, out)
    return stats
