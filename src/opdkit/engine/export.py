"""Export a run's newest checkpoint as a plain Hugging Face model directory.

    opdkit export runs/my-run --out my-model

Rebuilds the student exactly as the run did (the same model.student, layer dropping and
LoRA settings from the run's config.yaml), loads the checkpoint's weights, merges LoRA
adapters into the base weights, and writes `save_pretrained` output plus the tokenizer, so
the result loads with `AutoModelForCausalLM.from_pretrained(out)` or serves as the
teacher or student of another run.
"""
from __future__ import annotations

from pathlib import Path

from opdkit.engine.config import config_from_dict, read_yaml
from opdkit.engine.session import _lora
from opdkit.models import checkpoint
from opdkit.models.loading import load_model, load_tokenizer


def export_run(run_dir: str | Path, out: str | Path, step_dir: str | Path | None = None) -> Path:
    run_dir, out = Path(run_dir), Path(out)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise checkpoint.CheckpointError(f"{run_dir} has no config.yaml: is it an opdkit run directory?")
    cfg = config_from_dict(read_yaml(cfg_path) or {})
    path = Path(step_dir) if step_dir else checkpoint.latest(run_dir)
    if path is None:
        raise checkpoint.CheckpointError(f"{run_dir} holds no complete checkpoint")
    model = load_model(cfg.model.student, cfg.model.dtype, cfg.model.drop_layers_every, cfg.model.drop_layers)
    if cfg.model.lora_r:
        model = _lora(model, cfg)
    checkpoint.load(path, {"student": model})
    if cfg.model.lora_r:
        model = model.merge_and_unload()
    unmark_gguf(model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    load_tokenizer(cfg.model.student).save_pretrained(out)
    return out


def unmark_gguf(model) -> None:
    """A model loaded from GGUF holds plain dequantised weights, but transformers keeps its
    gguf quantizer marker and refuses `save_pretrained`; drop the marker."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and str(getattr(quantizer.quantization_config, "quant_method", "")).lower().endswith("gguf"):
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
