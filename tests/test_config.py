"""engine/config: a saved config loads back equal (also as --config), key suggestions, value coercion,
override parsing, YAML errors located, and a doc for every key (unknown keys: test_engine_bad_input.py)."""
from __future__ import annotations

import pytest

from opdkit.engine.config import (
    HISTORY,
    all_keys,
    closest_key,
    config_from_dict,
    field_docs,
    load_config,
    parse_override,
    read_yaml,
    save_config,
    set_key,
    to_dict,
)
from opdkit.errors import ConfigError

BASE = ["model.student=s", "model.teacher=t", "data.train=d.jsonl"]


def test_a_saved_config_loads_back_equal_and_works_as_a_config_file(tmp_path):
    cfg = load_config("distill", overrides=BASE + ["objective.options={k: 4, support: union}", "optim.betas=[0.8, 0.9]",
                                                   "model.teachers={}", "guard.disable=[hedging]"])
    history = [{"step": 3, "key": "optim.lr", "old": 1e-5, "new": 5e-6}]
    save_config(cfg, tmp_path / "config.yaml", history)
    tree = read_yaml(tmp_path / "config.yaml")
    assert tree[HISTORY] == history
    assert to_dict(config_from_dict(tree)) == to_dict(cfg)
    again = load_config("distill", tmp_path / "config.yaml")             # the resume history is not a setting
    assert to_dict(again) == to_dict(cfg)


def test_the_closest_key_is_found_by_initials_then_by_spelling():
    keys = list(all_keys())
    assert closest_key("optim.learning_rate", keys) == "optim.lr"
    assert closest_key("optim.stpes", keys) == "optim.steps"
    assert closest_key("rollout.max_tokens", keys) == "rollout.max_new_tokens"


def test_values_are_coerced_to_the_keys_type_or_refused_naming_the_key():
    cfg = config_from_dict({})
    set_key(cfg, "optim.steps", 2.0)
    set_key(cfg, "optim.lr", "3e-4")
    assert cfg.optim.steps == 2 and isinstance(cfg.optim.steps, int) and cfg.optim.lr == pytest.approx(3e-4)
    for key, value, says in [("optim.steps", 2.5, "optim.steps must be an integer, got 2.5"),
                             ("run.progress", "yes", "run.progress must be true or false"),
                             ("optim.lr", "fast", "optim.lr must be a float"),
                             ("objective.options", [1], "objective.options must be a dict"),
                             ("rollout.source", "both", "rollout.source must be one of")]:
        with pytest.raises(ConfigError, match=says):
            set_key(cfg, key, value)


def test_overrides_are_yaml_values_after_the_first_equals_sign():
    assert parse_override("objective.options={k: 4}") == ("objective.options", {"k": 4})
    assert parse_override("run.check=contains:a=b") == ("run.check", "contains:a=b")
    assert parse_override(" data.pi = ") == ("data.pi", "")
    with pytest.raises(ConfigError, match="is not key=value"):
        parse_override("optim.lr")


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 1e-5\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:4:1: YAML syntax error"):
        read_yaml(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config("distill", path)


def test_every_key_has_a_doc():
    docs = field_docs()
    assert [key for key, _, _ in docs] == list(all_keys())
    assert not [key for key, _, text in docs if len(text) < 10]
