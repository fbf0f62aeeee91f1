"""Resumable generation: every (context, kind) not yet in the output -> teacher -> parser -> a line.

A fixed pool of workers pulls work items, so memory stays flat however many images there
are; the teacher's client bounds and retries the HTTP calls. Parsed replies are written
as ``status: ok`` with their ``conversations``, malformed ones as ``status: rejected`` with
the ``reason``. Calls that fail for good (out of retries) are not written: a rerun tries
them again. Tokens and an estimated cost are counted.
"""

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from train.builtin.symbolic import KINDS, SymbolicContext
from train.datagen.parser import Rejected, parse_reply
from train.datagen.prompts import detail_instructions
from train.datagen.store import RecordLog, record_key
from train.datagen.teacher import Teacher, TeacherReply
from train.eval.client import ChatError

log = logging.getLogger("train.datagen")


@dataclass(frozen=True)
class RunConfig:
    out: Path
    kinds: tuple[str, ...] = KINDS
    workers: int = 4  # teacher calls in progress at once (the client also bounds HTTP)
    retry_rejected: bool = False  # ask again for keys whose earlier reply was rejected
    max_failures: int = 20  # stop scheduling once this many calls failed for good
    price_in_per_mtok: float = 0.0  # currency units per million prompt tokens
    price_out_per_mtok: float = 0.0
    log_every: int = 100


@dataclass
class RunStats:
    planned: int = 0  # (context, kind) pairs asked for
    skipped: int = 0  # already in the output
    ok: int = 0
    rejected: int = 0
    failed: int = 0
    aborted: bool = False
    repaired_bytes: int = 0  # partial last line cut off at start
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    cost: float = 0.0
    ok_by_kind: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # the first few failures, verbatim

    def as_dict(self) -> dict:
        out = dict(vars(self))
        out["ok_by_kind"], out["reasons"] = dict(self.ok_by_kind), dict(self.reasons.most_common())
        return out


def _record(context: SymbolicContext, kind: str, reply, **fields) -> dict:
    return {
        "key": record_key(context.image_id, kind), "image_id": context.image_id, "kind": kind,
        "image": context.image, **fields, "reply": reply.text, "teacher": reply.teacher,
        "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens},
        "retries": reply.retries, "context": context.text(),
    }


async def generate(contexts: list[SymbolicContext], teacher: Teacher, config: RunConfig) -> RunStats:
    for kind in config.kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown response type {kind!r}; expected one of {KINDS}")
    ids = [c.image_id for c in contexts]
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise ValueError(f"image id {dup!r} appears more than once in the input")
    instructions = detail_instructions()
    stats = RunStats(planned=len(contexts) * len(config.kinds))
    with RecordLog(config.out) as out:
        stats.repaired_bytes = out.repaired_bytes
        if out.repaired_bytes:
            log.warning("%s: cut off a partial last line (%d bytes) left by an interrupted run",
                        config.out, out.repaired_bytes)

        def todo():
            for context in contexts:
                for kind in config.kinds:
                    status = out.done.get(record_key(context.image_id, kind))
                    if status == "ok" or (status is not None and not config.retry_rejected):
                        stats.skipped += 1
                        continue
                    yield context, kind

        work = todo()

        async def worker() -> None:
            for context, kind in work:
                if stats.failed >= config.max_failures:
                    stats.aborted = True
                    return
                await _one(context, kind)

        async def _one(context: SymbolicContext, kind: str) -> None:
            try:
                reply = await teacher.complete(context, kind)
            except ChatError as exc:
                stats.failed += 1
                if len(stats.errors) < 5:
                    stats.errors.append(f"{record_key(context.image_id, kind)}: {exc}")
                log.warning("%s/%s failed: %s", context.image_id, kind, exc)
                return
            except ValueError as exc:  # the teacher cannot work from this context (e.g. no objects)
                reply = TeacherReply("", None, teacher=teacher.name)
                stats.rejected += 1
                stats.reasons["teacher could not answer"] += 1
                out.append(_record(context, kind, reply, status="rejected",
                                   reason=f"teacher could not answer: {exc}"))
                return
            stats.prompt_tokens += reply.prompt_tokens
            stats.completion_tokens += reply.completion_tokens
            stats.retries += reply.retries
            try:
                conversations = parse_reply(reply.text, kind, image_id=context.image_id,
                                            finish_reason=reply.finish_reason, instructions=instructions)
            except Rejected as exc:
                stats.rejected += 1
                stats.reasons[exc.reason.split(" (")[0]] += 1
                out.append(_record(context, kind, reply, status="rejected", reason=exc.reason))
            else:
                stats.ok += 1
                stats.ok_by_kind[kind] += 1
                out.append(_record(context, kind, reply, status="ok", conversations=conversations))
            done = stats.ok + stats.rejected
            if config.log_every and done % config.log_every == 0:
                log.info("%d written (%d rejected), %d failed, %d tokens", done, stats.rejected, stats.failed,
                         stats.prompt_tokens + stats.completion_tokens)

        await asyncio.gather(*(worker() for _ in range(max(1, config.workers))))
    stats.cost = (stats.prompt_tokens * config.price_in_per_mtok
                  + stats.completion_tokens * config.price_out_per_mtok) / 1e6
    return stats
