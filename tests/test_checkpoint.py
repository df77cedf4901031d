"""models/checkpoint: atomic save/load round trips, pruning, partial (LoRA-style) weights, damage
detected before any module is touched, and the RNG helpers."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from opdkit.errors import CheckpointError
from opdkit.models import checkpoint


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def test_save_then_load_restores_weights_and_state_exactly(tmp_path):
    saved, other = _net(0), _net(1)
    path = checkpoint.save(tmp_path, 7, {"student": saved}, {"step": 7, "note": [1, 2]})
    assert path.name == "step_00000007" and checkpoint.latest(tmp_path) == path
    state = checkpoint.load(path, {"student": other})
    assert state == {"step": 7, "note": [1, 2]}
    for a, b in zip(saved.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_prune_keeps_the_newest_and_removes_stale_temporaries_of_other_writers(tmp_path):
    stale = tmp_path / "checkpoints" / ".tmp-step_00000009-999999"      # a killed writer's leftover
    stale.mkdir(parents=True)
    half = tmp_path / "checkpoints" / "step_00000005"                    # no state.pt: not complete
    half.mkdir()
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"student": _net(step)}, {"step": step}, keep=2)
    assert [p.name for p in checkpoint.completed(tmp_path)] == ["step_00000002", "step_00000003"]
    assert not stale.exists() and half.exists()        # incomplete directories are neither latest nor pruned


def test_only_trainable_tensors_are_saved_when_some_are_frozen_and_a_missing_one_is_named(tmp_path):
    net = _net(0)
    net[0].requires_grad_(False)                                          # like a LoRA base
    path = checkpoint.save(tmp_path, 1, {"student": net}, {})
    from safetensors.torch import load_file
    assert sorted(load_file(str(path / "student.safetensors"))) == ["1.bias", "1.weight"]
    other = _net(1)
    other[0].requires_grad_(False)
    checkpoint.load(path, {"student": other})
    assert torch.equal(other[1].weight, net[1].weight) and not torch.equal(other[0].weight, net[0].weight)
    wider = _net(2)                                                       # every tensor trainable but one frozen
    wider[1].bias.requires_grad_(False)
    with pytest.raises(CheckpointError, match="lacks 2 trainable tensors"):
        checkpoint.load(path, {"student": wider})


def test_a_damaged_state_file_is_refused_before_any_weight_changes(tmp_path):
    path = checkpoint.save(tmp_path, 1, {"student": _net(0)}, {"step": 1})
    (path / "state.pt").write_bytes((path / "state.pt").read_bytes()[:40])
    target = _net(1)
    before = [t.clone() for t in target.state_dict().values()]
    with pytest.raises(checkpoint.DamagedCheckpoint, match="state.pt is damaged"):
        checkpoint.load(path, {"student": target})
    assert all(torch.equal(a, b) for a, b in zip(before, target.state_dict().values()))
    with pytest.raises(CheckpointError, match="has no teacher_ema.safetensors"):
        checkpoint.load(checkpoint.save(tmp_path, 2, {"student": _net(0)}, {}), {"teacher_ema": _net(0)})


def test_the_newest_intact_checkpoint_is_loaded_and_a_damaged_newer_one_moved_aside(tmp_path):
    for step in (1, 2):
        checkpoint.save(tmp_path, step, {"student": _net(step)}, {"step": step})
    newest = tmp_path / "checkpoints" / "step_00000002"
    (newest / "student.safetensors").write_bytes(b"\x00" * 10)
    warnings = []
    path, state = checkpoint.load_newest_intact(tmp_path, lambda p: checkpoint.load(p, {"student": _net(0)}),
                                                warnings.append)
    assert path.name == "step_00000001" and state == {"step": 1}
    assert (tmp_path / "checkpoints" / "damaged-step_00000002").is_dir() and not newest.exists()
    assert len(warnings) == 1 and "skipped damaged checkpoint step_00000002" in warnings[0]


def test_seeded_blocks_are_reproducible_and_leave_the_outer_stream_alone():
    torch.manual_seed(3)
    with checkpoint.seeded(11):
        first = torch.rand(3)
    after = torch.rand(3)
    torch.manual_seed(3)
    with checkpoint.seeded(11):
        assert torch.equal(torch.rand(3), first)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(3), after)              # as if the block had not drawn at all
    state = checkpoint.rng_state()
    drawn = torch.rand(2)
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(2), drawn)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_text("old")
    checkpoint.atomic_write_text(target, "new: 1\n")
    assert target.read_text() == "new: 1\n" and os.listdir(tmp_path) == ["config.yaml"]


class _InterruptWhenPickled:
    """Sends this process SIGINT while torch.save is pickling the state: a Ctrl-C mid-write."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return (int, (0,))


def test_ctrl_c_during_a_checkpoint_write_lands_after_the_write(tmp_path):
    """Before the fix the interrupt escaped torch.save's zip writer as RuntimeError('unexpected pos')
    and the checkpoint was lost; now the write completes and then the KeyboardInterrupt is raised."""
    state = {"before": torch.zeros(4096), "interrupt": _InterruptWhenPickled(), "after": torch.ones(4096)}
    # Python's own handler, as in `opdkit` run from a shell (a background `pytest &` starts with SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(tmp_path, 3, {"student": torch.nn.Linear(3, 2)}, state)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    saved = checkpoint.latest(tmp_path)
    assert saved is not None and saved.name == "step_00000003"
    assert torch.equal(torch.load(saved / "state.pt", weights_only=False)["after"], torch.ones(4096))
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
