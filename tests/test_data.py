"""tasks/data: the resumable prompt stream, chat messages with PI, prompt limits, and JSONL details
(the malformed-line, empty-file and missing-field messages are in test_engine_bad_input.py)."""
from __future__ import annotations

import json

import pytest

from opdkit.errors import DataError
from opdkit.tasks.data import Example, PromptStream, batches, fit_prompt, load_jsonl, messages


def _examples(n: int) -> list[Example]:
    return [Example(prompt=f"p{i}") for i in range(n)]


def test_each_epoch_is_a_permutation_and_a_restored_stream_continues_identically():
    stream = PromptStream(_examples(5), seed=3)
    first = [e.prompt for e in stream.take(5)]
    assert sorted(first) == [f"p{i}" for i in range(5)]
    stream.take(2)
    assert stream.epochs_done() == pytest.approx(1.4)
    restored = PromptStream(_examples(5), seed=3)
    restored.load_state_dict(stream.state_dict())
    assert [e.prompt for e in restored.take(9)] == [e.prompt for e in stream.take(9)]     # across an epoch boundary
    with pytest.raises(DataError, match="the dataset has 6 examples but the checkpoint was made with 5"):
        PromptStream(_examples(6), seed=3).load_state_dict(stream.state_dict())


def test_different_seeds_give_different_orders():
    orders = {tuple(e.prompt for e in PromptStream(_examples(8), seed=s).take(8)) for s in range(4)}
    assert len(orders) > 1


def test_pi_goes_to_the_system_message_before_or_after_the_prompt():
    assert messages("q") == [{"role": "user", "content": "q"}]
    assert messages("q", system="s", pi="rule") == [{"role": "system", "content": "rule\n\ns"},
                                                    {"role": "user", "content": "q"}]
    assert messages("q", system="s", pi="rule", pi_placement="user") == [{"role": "system", "content": "s"},
                                                                         {"role": "user", "content": "rule\n\nq"}]
    assert messages("q", system="s", pi="rule", pi_placement="user_end") == [{"role": "system", "content": "s"},
                                                                             {"role": "user", "content": "q\n\nrule"}]
    assert messages("q", pi_placement="user_end") == [{"role": "user", "content": "q"}]     # no PI: the student's turn


def test_prompt_limit_skips_or_keeps_the_end():
    ids = list(range(10))
    assert fit_prompt(ids, 10, "skip") == ids
    assert fit_prompt(ids, 4, "skip") is None
    assert fit_prompt(ids, 4, "truncate") == [6, 7, 8, 9]


def test_jsonl_fields_bom_blank_lines_and_non_string_values(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"q": "one", "gold": 5, "pi": None, "who": "tutor"}, {"q": "two", "note": "extra"}]
    path.write_bytes(b"\xef\xbb\xbf" + "\n\n".join(json.dumps(r) for r in rows).encode() + b"\n\n")
    got = load_jsonl(path, prompt_field="q", answer_field="gold", teacher_field="who")
    assert got == [Example("one", "", "5", None, "tutor"), Example("two", "", None, None, None)]
    assert load_jsonl(path, prompt_field="q", answer_field="gold")[0].teacher is None    # not routed: ignored


def test_a_byte_that_is_not_utf8_names_line_and_column(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')                 # \xe9 is the 16th byte
    with pytest.raises(DataError, match=r"latin.jsonl:2: byte 0xe9 at column 16 is not UTF-8"):
        load_jsonl(path)


def test_batches_are_consecutive_slices():
    assert batches(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert batches([], 3) == []
