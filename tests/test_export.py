"""engine/export: the exported directory is the checkpoint's student, loadable by transformers alone."""
from __future__ import annotations

import pytest
import torch
from conftest import engine_overrides

from opdkit.engine.config import load_config
from opdkit.engine.export import export_run
from opdkit.engine.runner import run
from opdkit.errors import CheckpointError
from opdkit.models import checkpoint


def test_the_export_holds_the_newest_checkpoints_weights(tiny_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    run(load_config("sft", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{"optim.steps": 2})))
    out = export_run(tmp_path / "r", tmp_path / "model")
    exported = AutoModelForCausalLM.from_pretrained(out)
    saved = load_file(str(checkpoint.latest(tmp_path / "r") / "student.safetensors"))
    state = exported.state_dict()
    assert saved and all(torch.equal(state[name], tensor) for name, tensor in saved.items())
    start = AutoModelForCausalLM.from_pretrained(tiny_dir / "student").state_dict()
    assert any(not torch.equal(start[name], tensor) for name, tensor in saved.items())     # trained, not the start
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(tiny_dir / "student").get_vocab()


def test_a_directory_without_a_checkpoint_is_refused(tmp_path, tiny_dir):
    from opdkit.engine.config import save_config
    (tmp_path / "r").mkdir()
    save_config(load_config("sft", overrides=engine_overrides(tiny_dir, tmp_path / "r")), tmp_path / "r" / "config.yaml")
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        export_run(tmp_path / "r", tmp_path / "model")
    assert not (tmp_path / "model").exists()
