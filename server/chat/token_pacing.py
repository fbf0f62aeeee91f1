"""Which generated tokens' logprobs go out with which text.

vLLM reports each step's token ids and their logprobs as soon as they are sampled, but it
holds their text back while that text could still be the start of a stop string (or of a
multi-byte character), and when a stop string ends the reply, the tokens that spelled it
were generated but their text is never shown. OpenAI's clients read a chunk's
``logprobs.content`` as the tokens of that chunk's ``delta.content``, and a reply's tokens as
what spells its content. ``TokenPacer`` keeps one choice's tokens until the text they spell
has been sent, and at a stop string's end drops the tokens that only spelled the stop string.

A token's width is what it adds to a fresh decode of the reply (the text the server sends,
``llava_model.reply_text``), measured over a few tokens before it so that word-piece spaces
and the bytes of one character are counted where they land. Special tokens are not part of
the text: zero wide, they go out with the text before them.
"""

import re
from collections import deque

_WINDOW = 6  # tokens of context for a width: more than one character's bytes


class TokenPacer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.pending: deque = deque()  # (position, token id, logprob entry, start, width)
        self.spelled = 0  # characters the ids so far spell

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_ids, entries) -> None:
        """Queue this step's tokens with their logprob entries."""
        for token_id, entry in zip(token_ids, entries or []):
            position = len(self.ids)
            self.ids.append(token_id)
            lo = max(0, position - _WINDOW)
            width = len(self._decode(self.ids[lo:])) - len(self._decode(self.ids[lo:position]))
            width = max(width, 0)
            self.pending.append((position, token_id, entry, self.spelled, width))
            self.spelled += width

    def take(self, sent: int, finished: bool = False, by_stop_string: bool = False) -> list[tuple]:
        """``(position, token id, entry)`` of the queued tokens whose text lies within the first
        ``sent`` characters of the reply. When the reply is ``finished``, every token that is
        left, except (``by_stop_string``) those that reach past the text: they spelled the stop
        string, or the token the stop string begins inside of (a word piece's space before a
        stop word, say), which the text shows only in part."""
        out = []
        while self.pending:
            position, token_id, entry, start, width = self.pending[0]
            if not (start + width <= sent or (finished and not by_stop_string)):
                break
            self.pending.popleft()
            out.append((position, token_id, entry))
        if finished:
            self.pending.clear()
        return out


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _unicode_to_byte() -> dict[str, int]:
    """Byte-level BPE's alphabet: each byte is written as one printable character (GPT-2's
    table: printable Latin-1 bytes stand for themselves, the rest move to U+0100 onward)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + shift)] = b
            shift += 1
    return table


class TokenBytes:
    """The bytes each token stands for (OpenAI's logprobs ``bytes``), so that a character
    split over several tokens can be put together from them: a byte-fallback piece
    (``<0xC3>``) is that byte and a byte-level BPE piece (``Ã``) the bytes it spells, where the
    token's text alone is empty or U+FFFD. Other tokens are their text's UTF-8."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.byte_level = "ByteLevel" in repr(getattr(backend, "decoder", None))
        self.table = _unicode_to_byte() if self.byte_level else {}
        added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
        self.special = set(getattr(tokenizer, "all_special_ids", ()) or ()) | set(added.values())
        self.memo: dict[int, bytes | None] = {}

    def _own(self, token_id: int) -> bytes | None:
        if token_id not in self.memo:
            piece = None
            if token_id not in self.special:
                try:
                    piece = self.tokenizer.convert_ids_to_tokens(token_id)
                except (IndexError, KeyError, ValueError, OverflowError):
                    piece = None
            own = None
            if isinstance(piece, str) and (match := _BYTE_PIECE.fullmatch(piece)):
                own = bytes([int(match.group(1), 16)])
            elif isinstance(piece, str) and piece and self.byte_level and all(c in self.table for c in piece):
                own = bytes(self.table[c] for c in piece)
            self.memo[token_id] = own
        return self.memo[token_id]

    def __call__(self, token_id: int, text: str) -> list[int]:
        """The bytes of ``token_id``, whose text is ``text``."""
        own = self._own(token_id)
        return list(text.encode() if own is None else own)
