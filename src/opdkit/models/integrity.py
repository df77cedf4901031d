"""Is a weights file whole? Cheap structural checks of safetensors and GGUF files.

A truncated download, a disk that filled mid-copy or a killed writer leaves a file whose
header promises more bytes than it holds. Reading only the header (safetensors: 8 bytes of
length + JSON; GGUF: the gguf package's reader over a memory map) finds that before
transformers or torch fail deep inside with a message that names neither the file nor the cause.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path


def safetensors_problem(path: Path) -> str | None:
    """None when the header parses and covers the file exactly; else what is wrong."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"it holds {size} bytes, fewer than the 8-byte header length"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"its header claims {n} bytes but the file holds {size}"
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a mapping of tensors"
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and len(v.get("data_offsets", ())) == 2]
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        return f"it holds {size} bytes but its header describes {expected}"
    return None


def gguf_problem(path: Path) -> str | None:
    """None when the gguf package reads the file's header and tensor table (or is not installed)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None                      # transformers will say that gguf is needed
    try:
        GGUFReader(str(path))
    except Exception as e:               # noqa: BLE001 - any parse failure means a damaged file
        return f"the GGUF reader failed ({type(e).__name__}: {e})"
    return None


def weights_problem(path: Path) -> str | None:
    path = Path(path)
    if path.suffix == ".safetensors":
        return safetensors_problem(path)
    if path.suffix == ".gguf":
        return gguf_problem(path)
    return None
