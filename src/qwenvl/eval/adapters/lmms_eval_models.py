"""The lmms-eval model classes, at module level so that a ModelManifest's class path can name them
(lmms-eval 0.7 imports `module.Class` and checks it subclasses `lmms` and has the right `is_simple`).
Importing this module needs lmms-eval; the logic is in lmms_eval.py."""

from lmms_eval.api.model import lmms

from .lmms_eval import QwenVLForLmmsEval


class QwenVLSimple(QwenVLForLmmsEval, lmms):
    """Requests in the simple layout (context, gen_kwargs, doc_to_visual, ...)."""
    is_simple = True


class QwenVLChat(QwenVLForLmmsEval, lmms):
    """Requests in the chat layout (context, doc_to_messages, gen_kwargs, ...)."""
    is_simple = False
