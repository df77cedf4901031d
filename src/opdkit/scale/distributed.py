"""One training loop for one and many processes: torchrun, DDP or FSDP2, rank-0 output.

    torchrun --nproc-per-node 8 -m opdkit.cli distill --config run.yaml run.parallel=fsdp
    torchrun --nnodes 2 --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        --nproc-per-node 8 -m opdkit.cli distill --config run.yaml      (see docs/scaling.md)

`setup(session)` starts the process group when torchrun set WORLD_SIZE > 1 (NCCL on GPUs,
gloo on CPU) and wraps the student's training forward (`opdkit.models.forward.StudentForward`) in DDP or FSDP2
(`fully_shard` per decoder layer, then the root). A single process is the world-size-1
case of the same code: `Dist()` with identity reductions.

What keeps N ranks equal to one process with the same global batch:
- data: every rank reads the same prompt stream and keeps its contiguous slice of each
  step's prompts (`Dist.shard`), so ranks x per-rank prompts = optim.prompts_per_step;
- loss: the step's token count is all-reduced before the division, and gradients are
  summed across ranks (not averaged), so the gradient is that of the global token mean;
- sampling: each micro-batch of rollouts is seeded by a per-step salt and the global index
  of its first row (train.collect), so a row's sample does not depend on the world size
  when the per-rank batch is a multiple of optim.micro_batch;
- metrics: sums are all-reduced and the step's responses all-gathered before the metrics
  are computed, so every rank holds the global metrics (and the guard decides alike).

Checkpoints: rank 0 writes a gathered full state dict (weights, and the optimizer state
keyed by parameter index exactly as a single process writes it) with the atomic code in
`opdkit.models.checkpoint`; every rank loads it. A checkpoint therefore resumes at any world size
and is an ordinary opdkit checkpoint for eval/export. The cost is that rank 0 holds the
full weights and optimizer state in CPU memory while saving (docs/scaling.md).
"""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from opdkit.errors import ConfigError
from opdkit.models import checkpoint
from opdkit.models.multiteacher import local_models

STRATEGIES = ("ddp", "fsdp")


@dataclass
class Dist:
    """This process's place in the job; world 1 is the plain single process."""

    rank: int = 0
    world: int = 1
    strategy: str = "none"            # none | ddp | fsdp
    fsdp_modules: list = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> tuple[list, int]:
        """This rank's contiguous slice of a step's items and the global index of its first."""
        if len(items) % self.world:
            raise ConfigError(f"optim.prompts_per_step={len(items)} must be a multiple of the world size {self.world} "
                             f"so that every rank gets the same number of prompts")
        n = len(items) // self.world
        return items[self.rank * n:(self.rank + 1) * n], self.rank * n

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64, so token counts stay exact)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, values: list) -> list:
        """The concatenation of every rank's list, in rank order (picklable items)."""
        if self.world == 1:
            return list(values)
        out = [None] * self.world
        dist.all_gather_object(out, list(values))
        return [v for part in out for v in part]

    def broadcast(self, value):
        """Rank 0's value on every rank (picklable)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def accumulate(self, forward: nn.Module, last: bool):
        """Gradient sync only on the step's last micro-batch (DDP would otherwise re-reduce
        already reduced gradients with the sum hook; FSDP2 saves the extra reduce-scatters)."""
        if self.strategy == "ddp" and not last:
            return forward.no_sync()
        if self.strategy == "fsdp":
            for m in self.fsdp_modules:
                m.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def full_weights(self):
        """FSDP2: all-gather every shard for generate, evaluation and teacher forwards, which
        run a different number of forwards per rank (rows stop at EOS) and would otherwise
        deadlock on the per-layer all-gathers. No-op for DDP and a single process."""
        if self.strategy != "fsdp":
            yield
            return
        for m in self.fsdp_modules:
            m.unshard()
            m.set_reshard_after_forward(False)
        try:
            yield
        finally:
            for m in self.fsdp_modules:
                m.reshard()
                m.set_reshard_after_forward(m is not self.fsdp_modules[0])    # [0] is the root


def _sum_hook(_state, bucket):
    """DDP comm hook: sum gradients over ranks (the default divides by the world size)."""
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def place_models(s, device: torch.device) -> None:
    """Student, its rollout copy and every local teacher on `device` (in place: the optimizer's
    parameters stay the same objects). Inputs follow the models' device downstream."""
    s.student.to(device)
    if s.rollout_copy is not None:
        s.rollout_copy.model.to(device)
    for teacher in local_models(s.teacher):
        if teacher is not s.student:
            teacher.to(device)          # replicated: every rank holds the whole teacher (each of several)


def setup(s, strategy: str = "ddp") -> Dist:
    """Join the torchrun job (if any), place the models and wrap the student's training forward."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if torch.cuda.is_available():       # one process on a GPU machine trains on the GPU, not the CPU
            place_models(s, torch.device("cuda", torch.cuda.current_device()))
        s.dist = Dist()
        return s.dist
    if strategy not in STRATEGIES:
        raise ConfigError(f"run.parallel must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "fsdp" and s.cfg.model.lora_r:
        raise ConfigError("model.lora_r with run.parallel=fsdp is not supported; use run.parallel=ddp for LoRA")
    if strategy == "fsdp" and s.cfg.teacher.self_weights == "ema" and s.cfg.mode == "self-distill":
        raise ConfigError("teacher.self_weights=ema with run.parallel=fsdp is not supported; use ddp or frozen/live")
    if strategy == "fsdp" and s.rollout_copy is not None:
        raise ConfigError("rollout.sampler_dtype with run.parallel=fsdp is not supported (the copy syncs from full "
                          "weights); use run.parallel=ddp or leave rollout.sampler_dtype empty")
    if strategy == "fsdp" and s.cfg.optim.state != "fp32":
        raise ConfigError("optim.state=8bit with run.parallel=fsdp is not supported (bitsandbytes does not take "
                          "sharded DTensor parameters); use run.parallel=ddp or optim.state=fp32")
    if s.cfg.optim.prompts_per_step % world:
        raise ConfigError(f"optim.prompts_per_step={s.cfg.optim.prompts_per_step} must be a multiple of the world size "
                          f"{world} so that every rank gets the same number of prompts")
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        place_models(s, device)
    d = Dist(rank, world, strategy)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        s.student_forward = DistributedDataParallel(s.student_forward, broadcast_buffers=False)
        s.student_forward.register_comm_hook(None, _sum_hook)
    else:
        from torch.distributed.fsdp import FSDPModule, fully_shard
        for layer in s.student.get_decoder().layers:
            fully_shard(layer)
        # The root keeps its parameters (embeddings, lm-head) gathered from forward to backward:
        # the lm-head weight it returns is used by the chunked objective after the forward.
        fully_shard(s.student_forward, reshard_after_forward=False)
        # Forwards outside the root (generate, evaluation) must not make a layer its own root:
        # initialise the root's state now, as its first forward would.
        s.student_forward._get_fsdp_state()._lazy_init()
        d.fsdp_modules = [m for m in s.student_forward.modules() if isinstance(m, FSDPModule)]
        for m in d.fsdp_modules:
            m.set_gradient_divide_factor(1.0)            # sum, like the DDP hook
            m.set_force_sum_reduction_for_comms(True)    # gloo has no PREMUL_SUM
    s.dist = d
    return d


def teardown(s=None) -> None:
    """Leave the process group. DDP's Reducer holds the group: freed after destroy_process_group, the
    gloo group's destructor joined worker threads that never returned, and the rank hung at exit
    (py-spy: ~ProcessGroupGloo under Reducer dealloc; the orphan outlived torchrun). So the wrapper
    goes first."""
    if s is not None and hasattr(s.student_forward, "no_sync"):      # DDP (FSDP2 wraps in place)
        s.student_forward = _unwrapped(s.student_forward)
        gc.collect()
    if dist.is_initialized():
        dist.barrier()           # no rank closes its connections while a peer still waits on the last collective
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- checkpoints

def _unwrapped(forward: nn.Module) -> nn.Module:
    return forward.module if hasattr(forward, "no_sync") else forward


def _fsdp_student_state(s) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(s.student_forward, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k[len("model."):]: v for k, v in state.items()}     # rank 0 only; empty elsewhere


def optimizer_state(s, optimizer) -> dict:
    """The optimizer state as a single process's `optimizer.state_dict()` (index-keyed)."""
    if s.dist.strategy != "fsdp":
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_optimizer_state_dict(s.student_forward, optimizer, options=options)
    if not s.dist.main:
        return {}
    index = {name: i for i, name in enumerate(_param_names(s, optimizer))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]
    return {"state": {index[n]: v for n, v in full["state"].items()}, "param_groups": groups}


def _param_names(s, optimizer) -> list[str]:
    """StudentForward-relative names of the optimizer's parameters, in optimizer order."""
    names = {id(p): n for n, p in _unwrapped(s.student_forward).named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def save(s, run_dir: Path, step: int, modules: dict, state: dict, keep: int) -> Path:
    """Gather on every rank, write on rank 0 (atomic), wait; returns the checkpoint path."""
    if s.dist.strategy == "fsdp":
        modules = {**modules, "student": _fsdp_student_state(s)}
    path = Path(run_dir) / "checkpoints" / f"{checkpoint.PREFIX}{step:08d}"
    if s.dist.main:
        path = checkpoint.save(run_dir, step, modules, state, keep)
    s.dist.barrier()
    return path


def load(s, path: Path, modules: dict, optimizer) -> dict:
    """Load a checkpoint written at any world size into this rank's (possibly sharded) student."""
    if s.dist.strategy != "fsdp":
        state = checkpoint.load(path, modules)
        optimizer.load_state_dict(state["optimizer"])
        return state
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    state = checkpoint.load(path, {k: v for k, v in modules.items() if k != "student"})
    weights = load_file(str(Path(path) / "student.safetensors"))
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(s.student_forward, {f"model.{k}": v for k, v in weights.items()}, options=full)
    names = _param_names(s, optimizer)
    saved = state["optimizer"]
    by_name = {"state": {names[i]: v for i, v in saved["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]}
    set_optimizer_state_dict(s.student_forward, optimizer, by_name, options=full)
    return state


class NullLog:
    """The metric log of ranks other than 0: same calls, nothing written."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.events = Path(run_dir) / "events.jsonl"

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
