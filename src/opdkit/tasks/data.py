"""Prompts in, token ids out: JSONL loading with precise errors, chat rendering, a resumable stream.

A dataset is a JSONL file with one object per line: a prompt (`prompt`), and optionally
privileged information (`pi`), a gold answer (`answer`) and a given response (`response`);
the field names are configurable. Every error names the file and the line.

The student sees `[system_prompt] + user prompt`; the teacher sees the same messages with
the privileged information added (as a system message or before the user text), rendered
through a chat template the same way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from opdkit.errors import DataError


@dataclass(frozen=True)
class Example:
    prompt: str
    pi: str = ""
    answer: str | None = None
    response: str | None = None
    teacher: str | None = None        # the teacher this example is routed to (model.teachers, teacher.route_field)


def load_jsonl(path: str | Path, prompt_field: str = "prompt", pi_field: str = "pi",
               answer_field: str = "answer", response_field: str = "response",
               require: tuple[str, ...] = (), teacher_field: str = "") -> list[Example]:
    """Read examples; `require` lists extra fields every line must have ('answer', 'response')."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset {path} does not exist (set data.train / data.eval to a JSONL file)")
    names = {"prompt": prompt_field, "pi": pi_field, "answer": answer_field, "response": response_field,
             "teacher": teacher_field}
    examples = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = _decode(path, lineno, raw[3:] if lineno == 1 and raw.startswith(b"\xef\xbb\xbf") else raw)
            if not line.strip():
                continue
            examples.append(_parse_line(path, lineno, line, names, require))
    if not examples:
        raise DataError(f"dataset {path} is empty: it needs one JSON object per line, e.g. "
                        f'{{"{prompt_field}": "What is 2 + 3?"}}')
    return examples


def _decode(path: Path, lineno: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: byte {raw[e.start]:#04x} at column {e.start + 1} is not UTF-8; "
                        f"re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _parse_line(path: Path, lineno: int, line: str, names: dict, require: tuple[str, ...]) -> Example:
    line = line.rstrip("\r\n")      # else an unterminated object is reported at "line 2 column 1"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}:{e.pos + 1}: not valid JSON ({e.msg} at column {e.pos + 1}); "
                        f"fix or delete the line") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    for role in ("prompt",) + tuple(require):
        key = names[role]
        if key not in row:
            raise DataError(f"{path}:{lineno}: missing field {key!r} (fields present: {sorted(row)}); "
                            f"add it or set data.{role}_field to the key that holds the {role}")
    value = row[names["prompt"]]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}:{lineno}: field {names['prompt']!r} must be a non-empty string")
    get = lambda role: None if row.get(names[role]) is None else str(row[names[role]])
    teacher = get("teacher") if names["teacher"] else None
    return Example(prompt=value, pi=get("pi") or "", answer=get("answer"), response=get("response"), teacher=teacher)


def messages(prompt: str, system: str = "", pi: str = "", pi_placement: str = "system") -> list[dict]:
    """Chat messages for one prompt; PI (teacher only) joins the system message ('system'), precedes the
    prompt ('user') or follows it ('user_end': the question keeps its place at the start of the turn)."""
    system_text = "\n\n".join(s for s in (pi if pi_placement == "system" else "", system) if s)
    user_text = {"user": f"{pi}\n\n{prompt}", "user_end": f"{prompt}\n\n{pi}"}.get(pi_placement, prompt) if pi else prompt
    out = [{"role": "system", "content": system_text}] if system_text else []
    return out + [{"role": "user", "content": user_text}]


def render(tokenizer, msgs: list[dict], plain: bool = False) -> list[int]:
    """Token ids of the chat-rendered prompt, ending with the assistant turn's opening
    (`plain`, or a tokenizer without a template: the messages as plain text)."""
    if getattr(tokenizer, "chat_template", None) and not plain:
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    # No template (base models): plain text, one message per paragraph.
    text = "\n\n".join(m["content"] for m in msgs) + "\n"
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def fit_prompt(ids: list[int], limit: int, overlong: str) -> list[int] | None:
    """Apply the prompt limit: None means skip; truncation keeps the end (the question and the turn opening)."""
    if len(ids) <= limit:
        return ids
    return None if overlong == "skip" else ids[-limit:]


class PromptStream:
    """Endless shuffled pass over examples; its position is part of the checkpoint.

    Epoch e uses the permutation from seed + e, so (epoch, index) alone resumes the stream.
    """

    def __init__(self, examples: list[Example], seed: int):
        self.examples, self.seed = examples, seed
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.examples), generator=g).tolist()

    def take(self, n: int) -> list[Example]:
        out = []
        while len(out) < n:
            if self.index == len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(self.examples[self._order[self.index]])
            self.index += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "size": len(self.examples)}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != len(self.examples):
            raise DataError(f"the dataset has {len(self.examples)} examples but the checkpoint was made "
                            f"with {state['size']}; resume with the same data.train file")
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation(self.epoch)

    def epochs_done(self) -> float:
        return self.epoch + self.index / max(1, len(self.examples))


def batches(items: list, size: int) -> list[list]:
    """Consecutive slices of at most `size` items."""
    return [items[i:i + size] for i in range(0, len(items), size)] if items else []

