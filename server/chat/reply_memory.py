"""Replies sent back as history are read as the tokens the model generated.

A chat client re-sends the whole conversation every turn, the server's own replies
included, as text. Tokenising that text again need not give the ids the model produced:
a byte-level BPE merges differently than the model sampled (``"a" "b"`` against ``"ab"``),
a first token without a space reads back with the format's separating space. From the
first such difference the history is no longer what the model saw, and the engine's
prefix cache (which matches ids) misses from there: the whole reply and all after it
are computed again.

So the server remembers, for each reply it sent, the prompt it answered (its text as a
hash, and the ids the engine got) and the ids it generated. When a later request's
rendered prompt starts with that prompt text, followed by that reply (after at most the
format's separating whitespace), its ids are the remembered prompt ids, the generated
ids, and then the fresh tokenisation of the rest — provided the fresh tokenisation has
a token boundary right where the reply ends. Anything else (an edited reply, a reply
cut by a stop string, a template that rewrites replies, an unknown reply) gets the fresh
tokenisation of the whole text, as before. Memory is bounded in tokens, least recently
used first out.
"""

import hashlib
import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

Span = tuple[int, int]

_PER_REPLY = 4  # prompts remembered per identical reply text ("2" answers many questions)
_MAX_GAP = 2  # characters a format may put between the prompt and the reply (" ", "\n")


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class _Entry:
    prompt_chars: int
    prompt_hash: bytes
    prompt_ids: array
    reply_ids: array

    @property
    def tokens(self) -> int:
        return len(self.prompt_ids) + len(self.reply_ids)


class ReplyMemory:
    """Thread-safe; ``max_tokens`` bounds the ids held (0: remember nothing)."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max(0, int(max_tokens))
        self._entries: OrderedDict[bytes, list[_Entry]] = OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()

    @property
    def tokens(self) -> int:
        return self._tokens

    def remember(self, prompt_text: str, prompt_ids: Sequence[int], reply_text: str,
                 reply_ids: Sequence[int]) -> None:
        """``reply_ids`` generated for the prompt (``prompt_text`` tokenised as ``prompt_ids``)
        and sent to the client as ``reply_text``; stop tokens already dropped."""
        entry = _Entry(len(prompt_text), _digest(prompt_text), array("i", prompt_ids), array("i", reply_ids))
        if not reply_text or not reply_ids or entry.tokens > self.max_tokens:
            return
        key = _digest(reply_text)
        with self._lock:
            same = self._entries.pop(key, [])
            for old in [e for e in same if e.prompt_hash == entry.prompt_hash]:
                same.remove(old)
                self._tokens -= old.tokens
            same.append(entry)
            self._tokens += entry.tokens
            while len(same) > _PER_REPLY:
                self._tokens -= same.pop(0).tokens
            self._entries[key] = same
            while self._tokens > self.max_tokens:
                _, evicted = self._entries.popitem(last=False)
                self._tokens -= sum(e.tokens for e in evicted)

    def splice(self, text: str, ids: Sequence[int], spans: Sequence[Span],
               replies: Sequence[str]) -> list[int] | None:
        """Ids for the rendered ``text`` (freshly tokenised as ``ids`` with character ``spans``)
        in which the latest remembered one of ``replies`` (the assistant messages' texts, in
        order) keeps its generated ids; ``None`` when no reply can be kept."""
        if not self.max_tokens:
            return None
        for reply in reversed(replies):
            if not reply:
                continue
            key = _digest(reply)
            with self._lock:
                candidates = list(self._entries.get(key, ()))
                if candidates:
                    self._entries.move_to_end(key)
            for entry in reversed(candidates):
                tail = _tail_after(entry, text, ids, spans, reply)
                if tail is not None:
                    return [*entry.prompt_ids, *entry.reply_ids, *ids[tail:]]
        return None


def _tail_after(entry: _Entry, text: str, ids: Sequence[int], spans: Sequence[Span], reply: str) -> int | None:
    """Index of the first fresh id after ``reply`` when ``text`` is ``entry``'s prompt, then
    ``reply``, then more; ``None`` if it is not, or no token starts where the reply ends."""
    start = entry.prompt_chars
    if len(text) < start + len(reply) or _digest(text[:start]) != entry.prompt_hash:
        return None
    gap = next((g for g in range(_MAX_GAP + 1) if text.startswith(reply, start + g)), None)
    if gap is None or text[start : start + gap].strip():
        return None
    end = start + gap + len(reply)
    for index, (first, last) in enumerate(spans):
        if first == last and first < end:  # an id with no text (a BOS put in front) is before it
            continue
        if first >= end:
            return index if first == end else None
        if last > end:  # a token straddles the reply's end: its ids cannot be cut there
            return None
    return len(ids) if len(spans) == len(ids) else None
