"""Errors shared across the package."""


class CheckpointError(ValueError):
    """A checkpoint (config.json, safetensors, training checkpoint) that cannot be used as it is; the
    message is one line naming the file and what is wrong with it."""
