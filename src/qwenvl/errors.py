"""Errors shared across the package."""


class CheckpointError(ValueError):
    """A checkpoint (config.json, safetensors, training checkpoint) that cannot be used as it is; the
    message is one line naming the file and what is wrong with it."""


class ContextLengthError(ValueError):
    """A prompt with more tokens than the model takes (its context, or the length a server allows); the
    message gives both counts."""


class MediaError(ValueError):
    """An image or video of a conversation that cannot be used (unreadable, too small, a bad option).
    `kind` ("image" | "video") and `number` (1-based, counted per conversation over all media) name it."""

    def __init__(self, kind: str, number: int, message: str):
        super().__init__(message)
        self.kind = kind
        self.number = number
