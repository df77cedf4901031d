"""Two tokenisations of one text, aligned by character offsets (cross-tokenizer OPD).

The student's response ids are decoded to text; the teacher's tokenizer re-tokenises that text.
Each token gets the character position where it starts: the teacher's from its tokenizer's
offsets (a fast tokenizer), the student's, and a teacher without offsets, by decoding every
prefix of the ids (a token that does not end on a character, e.g. half of a UTF-8 byte
sequence, has no start of its own and joins the token before). A chunk boundary is a position
where a token starts on both sides; chunk c is text[bounds[c]:bounds[c + 1]], and the tokens
of each side that start inside it. So the chunks partition both token sequences, every chunk
has at least one token on each side, and both sides' tokens of a chunk spell the same text.
A trailing student EOS is its own chunk, aligned with the teacher's EOS.

`shared_vocabulary` maps student ids to teacher ids whose tokens are the same string
(decoded after a fixed neighbour, so a SentencePiece word-start marker and a byte-level
leading space compare as the same space).
"""
from __future__ import annotations

from dataclasses import dataclass

from opdkit.errors import ModelError


@dataclass(frozen=True)
class Alignment:
    text: str                   # the student's decoded response (without a trailing EOS)
    teacher_ids: list[int]      # the teacher's tokens for it (+ its EOS when the student stopped)
    student_chunk: list[int]    # chunk index of each student token
    teacher_chunk: list[int]    # chunk index of each teacher token
    bounds: list[int]           # chunk c spans text[bounds[c]:bounds[c + 1]]; an EOS chunk adds no text

    @property
    def chunks(self) -> int:
        return (self.student_chunk[-1] + 1) if self.student_chunk else 0

    def single(self) -> list[bool]:
        """Per student token: whether its chunk is one token on both sides."""
        s_count, t_count = _counts(self.student_chunk, self.chunks), _counts(self.teacher_chunk, self.chunks)
        return [s_count[c] == 1 and t_count[c] == 1 for c in self.student_chunk]


def _counts(chunk_of: list[int], n: int) -> list[int]:
    out = [0] * n
    for c in chunk_of:
        out[c] += 1
    return out


def decoded_starts(tokenizer, ids: list[int]) -> tuple[str, list[int | None]]:
    """(text, start of each token) by decoding every prefix; None where a prefix is not a prefix of the text."""
    prefixes = tokenizer.batch_decode([ids[:i] for i in range(len(ids) + 1)], clean_up_tokenization_spaces=False)
    text = prefixes[-1]
    return text, [len(p) if text.startswith(p) else None for p in prefixes[:-1]]


def offset_starts(tokenizer, text: str) -> tuple[list[int], list[int | None]]:
    """The teacher's ids for `text` and each token's start: from offsets, else by decoding (slow tokenizer).

    Raises ModelError when neither works: decoding the ids does not give back the text.
    """
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = [s for s, _ in enc["offset_mapping"]]
        if all(a <= b for a, b in zip(starts, starts[1:])):
            return list(enc["input_ids"]), starts
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    decoded, starts = decoded_starts(tokenizer, ids)
    if decoded != text:
        raise ModelError(
            f"teacher tokenizer {type(tokenizer).__name__} gives no character offsets (not a fast tokenizer) and "
            f"decoding its tokens does not give back the text ({text[:40]!r} -> {decoded[:40]!r}), so the student's "
            f"tokens cannot be aligned with it; save the teacher with a fast tokenizer (tokenizer.json)")
    return ids, starts


def align(text: str, student_starts: list[int | None], teacher_ids: list[int],
          teacher_starts: list[int | None]) -> Alignment:
    """Chunks at the positions where both sides start a token (positions past the text join the last chunk)."""
    end = len(text)
    common = ({p for p in student_starts if p is not None and p < end}
              & {p for p in teacher_starts if p is not None and p < end}) | {0}
    bounds = sorted(common) + [end] if text else [0]        # no text: no text chunks
    index = {p: c for c, p in enumerate(bounds[:-1])}
    return Alignment(text, list(teacher_ids), _chunk_of(student_starts, index), _chunk_of(teacher_starts, index),
                     bounds)


def _chunk_of(starts: list[int | None], index: dict[int, int]) -> list[int]:
    out, current = [], 0
    for p in starts:
        if p is not None and p in index:
            current = index[p]
        out.append(current)
    return out


class Aligner:
    """Re-tokenises student responses for the teacher and aligns the two tokenisations."""

    def __init__(self, student_tok, teacher_tok):
        self.student_tok, self.teacher_tok = student_tok, teacher_tok
        self.student_eos, self.teacher_eos = student_tok.eos_token_id, teacher_tok.eos_token_id
        if self.teacher_eos is None:
            raise ModelError("the cross-tokenizer teacher's tokenizer has no EOS token, so the student's stop cannot "
                             "be scored; set eos_token in the teacher's tokenizer_config.json")

    def __call__(self, response: list[int]) -> Alignment:
        stops = bool(response) and response[-1] == self.student_eos
        body = response[:-1] if stops else list(response)
        text, student_starts = decoded_starts(self.student_tok, body)
        teacher_ids, teacher_starts = offset_starts(self.teacher_tok, text) if text else ([], [])
        if teacher_ids:
            teacher_starts = [0] + list(teacher_starts[1:])       # leading text a tokenizer strips joins chunk 0
        a = align(text, student_starts, teacher_ids, teacher_starts)
        if not stops:
            return a
        eos_chunk = a.chunks           # its own chunk: student EOS <-> teacher EOS
        return Alignment(text, a.teacher_ids + [self.teacher_eos], a.student_chunk + [eos_chunk],
                         a.teacher_chunk + [eos_chunk], a.bounds)

    def check(self, probe: str = "Paris is the capital of France. 3 + 4 = 7, naïve café!") -> None:
        """Refuse a teacher tokenizer that cannot be aligned: no offsets and no faithful decode, or
        a tokenizer that changes the text (a normaliser, unknown tokens) so it would score another text."""
        ids, _ = offset_starts(self.teacher_tok, probe)
        back = self.teacher_tok.decode(ids, clean_up_tokenization_spaces=False)
        if back != probe:
            raise ModelError(f"the teacher tokenizer changes text on a round trip ({probe!r} -> {back!r}): a normaliser "
                             f"or unknown tokens, so its log-probabilities would be of another text; cross-tokenizer "
                             f"distillation needs a lossless teacher tokenizer")


def token_strings(tokenizer) -> list[str | None]:
    """Each id's text as it reads after a neighbour (None: a special token or not a whole character)."""
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"][:1]
    base = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
    special = set(tokenizer.all_special_ids)
    n = len(tokenizer)
    texts = tokenizer.batch_decode([anchor + [i] for i in range(n)], clean_up_tokenization_spaces=False)
    return [None if i in special or not t.startswith(base) or "\ufffd" in t or len(t) == len(base)
            else t[len(base):] for i, t in enumerate(texts)]


def shared_vocabulary(student_tok, teacher_tok) -> dict[int, int]:
    """student id -> teacher id for tokens that are the same string in both vocabularies."""
    teacher_of: dict[str, int] = {}
    for i, s in enumerate(token_strings(teacher_tok)):
        if s is not None:
            teacher_of.setdefault(s, i)
    return {i: teacher_of[s] for i, s in enumerate(token_strings(student_tok)) if s is not None and s in teacher_of}
