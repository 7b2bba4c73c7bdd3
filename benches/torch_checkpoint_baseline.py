"""The plain-torch checkpoint quantization people write by hand today, as a baseline for
``fp8fast quantize`` (optional: runs when torch is installed).

Per-channel E4M3 in the compressed-tensors layout, like the numpy baseline: for each 2-D
``*.weight`` other than embeddings, norms and ``lm_head``, ``scale = amax / 448`` per output
channel, ``q = (w / scale).to(torch.float8_e4m3fn)``, the scale saved as ``<w>_scale`` in the
weight's dtype; everything else copied. ``safetensors.torch.load_file`` reads the whole file
and ``save_file`` writes the whole result, as such scripts do.

    python benches/torch_checkpoint_baseline.py SRC.safetensors DST.safetensors
"""

from __future__ import annotations

import re
import sys

import torch
from safetensors.torch import load_file, save_file

SKIP = re.compile(r"embed|norm|lm_head")


def quantize(src: str, dst: str) -> None:
    tensors = load_file(src)
    out = {}
    for name, w in tensors.items():
        if name.endswith(".weight") and w.dim() == 2 and not SKIP.search(name):
            w32 = w.float()
            scale = (w32.abs().amax(dim=1, keepdim=True) / 448).clamp(min=torch.finfo(torch.float32).tiny)
            out[name] = (w32 / scale).to(torch.float8_e4m3fn)
            out[name + "_scale"] = scale.to(w.dtype)
        else:
            out[name] = w
    save_file(out, dst, metadata={"format": "pt"})


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    quantize(sys.argv[1], sys.argv[2])
