"""Bad input to the engine: each case gets a message that names the input and the fix."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import engine_overrides

from opdkit import cli
from opdkit.engine.config import load_config
from opdkit.engine.metrics import read_metrics
from opdkit.engine.runner import run
from opdkit.engine.session import prepare_items
from opdkit.errors import ConfigError, DataError, ModelError, TrainingError
from opdkit.lab.tiny import CHATML_TEMPLATE, build_model, build_tokenizer
from opdkit.models import checkpoint
from opdkit.models.loading import load_model, preflight
from opdkit.models.teachers import PromptRenderer
from opdkit.tasks.data import load_jsonl


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    f = _write(tmp_path / "d.jsonl", ['{"prompt": "ok"}', '{"prompt": "broken"', '{"prompt": "ok"}'])
    # the column is on line 2 itself (json.loads of the raw line used to say "column 1" of a line 3)
    with pytest.raises(DataError, match=r"d\.jsonl:2:20: not valid JSON \(Expecting ',' delimiter at column 20\)"):
        load_jsonl(f)


def test_empty_dataset_is_refused(tmp_path):
    f = _write(tmp_path / "d.jsonl", ["", "   "])
    with pytest.raises(DataError, match="is empty"):
        load_jsonl(f)


def test_missing_field_names_the_line_and_the_config_key(tmp_path):
    f = _write(tmp_path / "d.jsonl", ['{"prompt": "a", "answer": "1"}', '{"question": "b"}'])
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing field 'prompt'.*data\.prompt_field"):
        load_jsonl(f)
    g = _write(tmp_path / "g.jsonl", ['{"prompt": "a"}'])
    with pytest.raises(DataError, match=r"missing field 'answer'"):
        load_jsonl(g, require=("answer",))


def test_non_string_prompt_is_refused(tmp_path):
    f = _write(tmp_path / "d.jsonl", ['{"prompt": 3}'])
    with pytest.raises(DataError, match="must be a non-empty string"):
        load_jsonl(f)


def test_overlong_prompts_are_skipped_and_counted_or_truncated(tmp_path):
    tok = build_tokenizer()
    f = _write(tmp_path / "d.jsonl", [json.dumps({"prompt": "hi"}), json.dumps({"prompt": "word " * 200})])
    examples = load_jsonl(f)
    render = PromptRenderer(tok)
    limit = len(render(examples[0])) + 2
    items, skipped = prepare_items(examples, render, limit, "skip")
    assert (len(items), skipped) == (1, 1)
    items, skipped = prepare_items(examples, render, limit, "truncate")
    assert skipped == 0 and len(items[1].prompt_ids) == limit
    assert items[1].prompt_ids == render(examples[1])[-limit:]    # keeps the end: the turn opening


def test_vocabulary_mismatch_names_sizes_and_first_differing_ids():
    report = preflight(build_tokenizer(), build_tokenizer(vocab_size=300))
    with pytest.raises(ModelError, match=r"student has 320 tokens, teacher 300; first differing ids: id \d+"):
        report.raise_if_bad()


def test_eos_mismatch_is_refused():
    teacher = build_tokenizer(eos="<|endoftext|>")
    with pytest.raises(ModelError, match="EOS mismatch.*<\\|im_end\\|>.*<\\|endoftext\\|>"):
        preflight(build_tokenizer(), teacher).raise_if_bad()


def test_chat_template_mismatch_is_refused_unless_chosen():
    teacher = build_tokenizer(template=CHATML_TEMPLATE.replace("<|im_start|>", "<|im_start|> "))
    with pytest.raises(ModelError, match="chat-template mismatch.*model.teacher_template"):
        preflight(build_tokenizer(), teacher).raise_if_bad()
    report = preflight(build_tokenizer(), teacher, teacher_template="student")
    report.raise_if_bad()
    assert any("templates differ" in n for n in report.notes)


def test_differing_special_tokens_are_masked_not_refused():
    teacher = build_tokenizer(specials=["<|pad|>", "<|im_start|>", "<|im_end|>"])
    report = preflight(build_tokenizer(), teacher)
    report.raise_if_bad()
    assert report.masked_special_ids == [0]


def test_identical_pair_passes_preflight():
    report = preflight(build_tokenizer(), build_tokenizer())
    assert report.problems == [] and report.masked_special_ids == []


def test_missing_model_path(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))


def test_unknown_config_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'.*Did you mean 'optim.lr'"):
        load_config("sft", overrides=["model.student=x", "data.train=y", "optim.lrr=1e-5"])


def test_bad_config_values_name_the_key():
    base = ["model.student=x", "data.train=y"]
    with pytest.raises(ConfigError, match="optim.lr must be a float"):
        load_config("sft", overrides=base + ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="rollout.top_p must lie in"):
        load_config("sft", overrides=base + ["rollout.top_p=1.5"])
    with pytest.raises(ConfigError, match="distill` needs model.teacher"):
        load_config("distill", overrides=base)
    with pytest.raises(ConfigError, match="teacher.self_weights must be one of"):
        load_config("sft", overrides=base + ["teacher.self_weights=sometimes"])


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: {student: s}\ndata: {train: t.jsonl}\noptim: {lr: 0.001, steps: 7}\nobjective: {options: {k: 5}}\n")
    cfg = load_config("distill", f, ["optim.lr=2e-5", "model.teacher=t"])
    assert (cfg.optim.lr, cfg.optim.steps, cfg.objective.options, cfg.model.teacher) == (2e-5, 7, {"k": 5}, "t")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {learning_rate: 1}\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config("sft", bad)


def test_cli_reports_user_errors_in_one_line(tiny_dir, tmp_path, capsys):
    code = cli.main(["sft", *engine_overrides(tiny_dir, tmp_path / "r"), "data.train=" + str(tmp_path / "none.jsonl")])
    assert code == 2
    assert "opdkit: error: dataset" in capsys.readouterr().err


@pytest.mark.parametrize("value, message", [
    ("[5]", "layer indices \\[5\\] are outside this model's 2 decoder layers"),
    ("[0, 1]", "removes all 2 decoder layers"),
    ("[1, 1]", "lists a layer twice"),
    ("[-1]", "integers >= 0"),
])
def test_bad_drop_layers_is_refused_through_the_cli(tiny_dir, tmp_path, capsys, value, message):
    out = tmp_path / "r"
    code = cli.main(["sft", *engine_overrides(tiny_dir, out, **{"model.student": tiny_dir / "teacher"}),
                     f"model.drop_layers={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("opdkit: error: ") and "model.drop_layers" in err
    assert __import__("re").search(message, err), err
    assert not (out / "metrics.jsonl").exists()


def test_drop_layers_builds_the_student_the_run_trains(tiny_dir, tmp_path):
    out = tmp_path / "r"
    code = cli.main(["sft", *engine_overrides(tiny_dir, out, **{"model.student": tiny_dir / "teacher"}),
                     "model.drop_layers=[0]"])
    assert code == 0
    from safetensors import safe_open
    saved = sorted(out.glob("checkpoints/*/student.safetensors"))[-1]
    with safe_open(saved, "pt") as fh:
        layers = {key.split(".layers.")[1].split(".")[0] for key in fh.keys() if ".layers." in key}
    assert layers == {"0"}                          # the 2-layer model trained as a 1-layer student
    cfg = load_config("sft", overrides=[f"model.student={tiny_dir / 'teacher'}", "model.drop_layers=[0]",
                                        f"data.train={tiny_dir / 'train.jsonl'}"])
    assert load_model(str(tiny_dir / "teacher"), drop=cfg.model.drop_layers).config.num_hidden_layers == 1
    with pytest.raises(ConfigError, match="set only one"):
        load_config("sft", overrides=[f"model.student={tiny_dir / 'teacher'}", "model.drop_layers=[0]",
                                      "model.drop_layers_every=2", f"data.train={tiny_dir / 'train.jsonl'}"])


@pytest.fixture
def nan_teacher(tmp_path):
    tok = build_tokenizer()
    model = build_model(tok, layers=1, seed=3)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(tmp_path / "nan_teacher")
    tok.save_pretrained(tmp_path / "nan_teacher")
    return tmp_path / "nan_teacher"


def test_nonfinite_loss_skips_steps_logs_and_stops(tiny_dir, tmp_path, nan_teacher):
    cfg = load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{
        "model.teacher": nan_teacher, "run.max_bad_steps": 2, "optim.steps": 5}))
    with pytest.raises(TrainingError, match="2 non-finite steps in a row"):
        run(cfg)
    rows = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert [r["train/skipped"] for r in rows] == [1, 1]
    events = [json.loads(x) for x in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "skipped_nonfinite" for e in events) == 2
    saved = checkpoint.load(checkpoint.latest(tmp_path / "r"), {"student": load_model(str(tiny_dir / "student"))})
    before = load_model(str(tiny_dir / "student")).state_dict()
    from safetensors.torch import load_file
    after = load_file(str(checkpoint.latest(tmp_path / "r") / "student.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in after), "a skipped step changed the weights"
    assert saved["step"] == 2
