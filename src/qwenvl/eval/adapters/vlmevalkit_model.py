"""The VLMEvalKit model class, at module level so that it has an importable name (pickling, logs,
`--config` files that name it). Importing this module needs VLMEvalKit; the logic is in vlmevalkit.py."""

from vlmeval.vlm.base import BaseModel

from .vlmevalkit import QwenVLForVLMEvalKit


class QwenVLVLMEvalKit(QwenVLForVLMEvalKit, BaseModel):
    # BaseModel.generate (message normalisation and checks, then generate_inner) replaces the
    # stand-alone one; BaseModel.__init__ (reached through super()) sets dump_image_func.
    generate = BaseModel.generate
