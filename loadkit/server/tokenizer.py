"""The server's own tokenizer, no downloads: a token is a word or one punctuation mark
with the whitespace before it (so tokens concatenate back to the text), or trailing
whitespace. Ids come from a small fixed vocabulary, else a stable hash."""

from __future__ import annotations

import re
import zlib
from itertools import islice

_TOKEN_RE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")

# The words the generator writes; their ids are stable (index in this tuple).
_WORDS_TEXT = """the of and to in is that for it as was with be by on not he this are or his from at
    which but have an they you were her she there been one all we their has would when if
    can more will so no what up out about into than them some could time only these two
    may first then do any like my now over such our man me even most made after also did
    many before must through back years where much your way well down should because each
    just those people how too little state good very make world still own see men work
    long get here between both life being under never day same another know while last
    might us great old year off come since against go came right used take three load
    test token model stream request limit window rate server client latency queue burst
    capacity signal measure system network buffer packet record answer value result
    slot budget water river stone light paper music garden market winter summer
    morning evening story number letter simple clear quiet bright gentle steady careful
    honest rapid"""
WORDS: tuple[str, ...] = tuple(_WORDS_TEXT.split())
PUNCT: tuple[str, ...] = (",", ".", ";", ":", "!", "?")
UNKNOWN_BASE = 1000
VOCAB_SIZE = 50_000

_VOCAB: dict[str, int] = {}
for _i, _w in enumerate(WORDS):
    _VOCAB[" " + _w] = _i
    _VOCAB[_w.capitalize()] = 500 + _i
    _VOCAB[" " + _w.capitalize()] = 700 + _i
for _i, _p in enumerate(PUNCT):
    _VOCAB[_p] = 900 + _i
_ID_TO_TEXT: dict[int, str] = {v: k for k, v in _VOCAB.items()}


def tokenize(text: str) -> list[str]:
    """Split into tokens; ``"".join(tokenize(t)) == t``."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str, cap: int | None = None) -> int:
    """Tokens in ``text``; with ``cap``, counting stops at ``cap + 1`` (a prompt that
    long is refused anyway, and counting a megabyte of text would stall the server)."""
    matches = _TOKEN_RE.finditer(text)
    if cap is not None:
        return sum(1 for _ in islice(matches, cap + 1))
    return sum(1 for _ in matches)


def token_id(token: str) -> int:
    tid = _VOCAB.get(token)
    if tid is not None:
        return tid
    return UNKNOWN_BASE + zlib.crc32(token.encode("utf-8", "surrogatepass")) % (
        VOCAB_SIZE - UNKNOWN_BASE
    )


def decode_id(tid: int) -> str:
    """Text for a token id (ids outside the vocabulary map onto a word, stably)."""
    text = _ID_TO_TEXT.get(tid)
    if text is not None:
        return text
    return " " + WORDS[tid % len(WORDS)]


def decode_ids(ids: list[int]) -> str:
    return "".join(decode_id(i) for i in ids)
