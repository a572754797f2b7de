"""The dtype names a user may write (CLI flags, `qwenvl.load(dtype=...)`, bench presets) -> torch dtypes.
One table so that every entry point accepts the same spellings."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
