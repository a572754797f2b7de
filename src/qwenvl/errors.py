"""Errors shared across the package."""


class CheckpointError(ValueError):
    """A checkpoint (config.json, safetensors, training checkpoint) that cannot be used as it is; the
    message is one line naming the file and what is wrong with it."""


class ContextLengthError(ValueError):
    """A prompt with more tokens than the model takes (its context, or the length a server allows); the
    message gives both counts."""
