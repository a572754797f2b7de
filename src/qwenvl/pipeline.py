"""`qwenvl.load(...)` -> Pipeline: the network, the processor and the engine behind one small API.

    pipe = qwenvl.load("path/to/Qwen2.5-VL-3B-Instruct", dtype="bfloat16")
    batch = pipe.processor(messages)            # tensors named and laid out as transformers does
    logits = pipe.model(**batch).logits
    result = pipe.chat(messages, max_new_tokens=64, temperature=0)
    for delta in pipe.stream(messages): print(delta, end="")

chat and stream run the generation driver (engine/driver.py); a server or another batching caller gets
its own with `pipe.driver(...)` and builds its sequences with `pipe.sequence` / `pipe.token_sequence`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .engine.driver import Delta, Driver, Failed, Finished
from .engine.engine import Engine, Sequence
from .engine.logprobs import prompt_logprobs
from .engine.sampling import SamplingParams
from .errors import ContextLengthError
from .model import QwenVL
from .dtypes import DTYPES

MEDIA_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@dataclass
class ChatResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    media: list = field(default_factory=list)   # MediaInfo per image/video, in prompt order
    timings: dict = field(default_factory=dict)
    cached_tokens: int = 0                      # prompt tokens taken from the prefix cache (Pipeline.prefix_cache)


def resolve_checkpoint(path_or_id: str | Path) -> Path:
    """A local directory, or a Hugging Face hub id downloaded through huggingface_hub."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    name = str(path_or_id)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name}: no such checkpoint directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{name} is not a local directory, and huggingface_hub is not installed to download "
                                "it (pip install 'qwenvl[hub]')") from None
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt"]))
    except Exception as e:
        raise FileNotFoundError(f"{name} is not a local directory and could not be downloaded from the Hugging Face "
                                f"hub ({type(e).__name__}: {e}). Without network access, download it elsewhere and "
                                "pass the local path.") from None


class Pipeline:
    def __init__(self, model: QwenVL, processor, generation_config: dict | None = None, path: Path | None = None,
                 max_batch: int = 8, compile: bool = False):
        self.model = model
        self.processor = processor
        self.generation_config = generation_config or {}
        self.path = path
        self.max_batch = max_batch
        self.compile = compile  # torch.compile the engines' decode steps (engine.Engine)
        # set to an engine.prefix_cache.PrefixCache to reuse prefixes across calls (a chat's earlier turns)
        self.prefix_cache = None

    @property
    def config(self):
        return self.model.config

    @property
    def eos_ids(self) -> tuple[int, ...]:
        eos = self.generation_config.get("eos_token_id", self.config.eos_token_id)
        if eos is None:
            return ()
        return tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)

    @property
    def tokenizer(self):
        """The checkpoint's tokenizer (processing.tokenizer.Tokenizer): encode, decode, token_to_id."""
        return self.processor.tokenizer

    @property
    def context_length(self) -> int:
        """The most tokens (prompt and answer) the model takes: its max_position_embeddings."""
        return self.config.text.max_position_embeddings

    @property
    def vocab_size(self) -> int:
        return self.config.text.vocab_size

    # ------------------------------------------------------------------ requests

    def sampling_params(self, params: SamplingParams | None = None, **kwargs) -> SamplingParams:
        if params is None:
            params = SamplingParams.from_kwargs(**kwargs)
        elif kwargs:
            raise TypeError("pass either params= or sampling keyword arguments, not both")
        return params.with_defaults(self.generation_config)

    def sequence(self, conversation: list[dict], params: SamplingParams, **template_kwargs) -> tuple[Sequence, list]:
        """A conversation -> (Sequence ready for a Driver, MediaInfo per image/video). template_kwargs go to
        the chat template (e.g. tools=[...]). A prompt over the model's context raises ContextLengthError."""
        batch = self.processor(conversation, **template_kwargs)
        device = self.model.device
        media = {k: batch[k].to(device) for k in MEDIA_KEYS if k in batch}
        ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
        seq = Sequence(prompt_ids=ids, params=params, media=media, eos_ids=self.eos_ids)
        return seq, batch.media[0]

    def token_sequence(self, ids: list[int], params: SamplingParams) -> Sequence:
        """A Sequence for a raw prompt of token ids (no chat template, no media)."""
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary of {self.vocab_size}")
        return Sequence(prompt_ids=list(ids), params=params, eos_ids=self.eos_ids)

    def driver(self, max_batch: int | None = None, max_len: int | None = None, prefix_cache=None,
               prefill_chunk: int | None = None) -> Driver:
        """A generation driver (engine.driver.Driver) over this model and tokenizer: an Engine with
        `max_batch` slots (default self.max_batch) of `max_len` tokens (default the context), decode steps
        compiled as self.compile says. prefix_cache: an engine.prefix_cache.PrefixCache to reuse prompt
        prefixes (None: none); prefill_chunk: prompt tokens per step for admitted prefills (None: whole)."""
        engine = Engine(self.model, max_batch=max_batch or self.max_batch, max_len=max_len or self.context_length,
                        compile=self.compile, prefix_cache=prefix_cache, prefill_chunk=prefill_chunk)
        return Driver(engine, self.tokenizer)

    def grammars(self):
        """A new grammar compiler for this tokenizer (engine.grammar.Grammars; needs llguidance)."""
        from .engine.grammar import Grammars
        return Grammars(self.tokenizer.backend.to_str(), self.vocab_size, self.eos_ids)

    @torch.inference_mode()
    def prompt_logprobs(self, ids: list[int], top: int) -> list:
        """The log-probability of each prompt token given the ones before it, with the `top` most likely
        alternatives (engine.logprobs.prompt_logprobs: the first token has none)."""
        logits = self.model(torch.tensor([ids], device=self.model.device)).logits[0]
        return prompt_logprobs(logits, ids, top)

    # ------------------------------------------------------------------ chat

    def chat(self, messages: list, params: SamplingParams | None = None, **sampling):
        """One conversation -> ChatResult; a list of conversations -> list of ChatResult (decoded together).
        A sequence that fails (NaN logits, a failing sampler) fails the call, once the others have ended."""
        batched = bool(messages) and isinstance(messages[0], (list, tuple))
        conversations = messages if batched else [messages]
        params = self.sampling_params(params, **sampling)
        pairs = [self.sequence(c, params) for c in conversations]
        seqs = [s for s, _ in pairs]
        driver = self.driver(max_batch=min(self.max_batch, len(seqs)), max_len=self._max_len(seqs),
                             prefix_cache=self.prefix_cache)
        start = time.perf_counter()
        ends: dict[int, Finished] = {}
        failed = []
        for event in driver.run(seqs):
            if isinstance(event, Finished):
                ends[id(event.seq)] = event
            elif isinstance(event, Failed):
                failed.append(event.error)
        if failed:
            raise failed[0]
        results = [self._result(ends[id(s)], media, start) for s, media in pairs]
        return results if batched else results[0]

    def stream(self, messages: list, params: SamplingParams | None = None, on_token=None, **sampling):
        """Yield text deltas of one conversation's answer as they are produced. The generator's return
        value (StopIteration.value, or `yield from`) is the full ChatResult. on_token(n), if given, is
        called with the number of tokens generated so far after each step (the first call marks the
        end of the vision tower and prefill), text or not. A failed sequence raises its error."""
        params = self.sampling_params(params, **sampling)
        seq, media = self.sequence(messages, params)
        driver = self.driver(max_batch=1, max_len=self._max_len([seq]), prefix_cache=self.prefix_cache)
        start = time.perf_counter()
        for event in driver.run([seq]):
            if isinstance(event, Delta):
                if on_token is not None:
                    on_token(len(seq.output_ids))
                if event.text:
                    yield event.text
            elif isinstance(event, Failed):
                raise event.error
            else:
                return self._result(event, media, start)

    def _max_len(self, seqs: list[Sequence]) -> int:
        need = max(len(s.prompt_ids) + s.params.max_new_tokens for s in seqs)
        limit = self.context_length
        longest = max(len(s.prompt_ids) for s in seqs)
        if longest >= limit:
            raise ContextLengthError(f"prompt has {longest} tokens, over the model's context of {limit}")
        return min(need, limit)

    def _result(self, end: Finished, media, start: float) -> ChatResult:
        seq = end.seq
        timings = dict(seq.timings)
        timings["total_s"] = time.perf_counter() - start
        n = max(len(seq.output_ids) - 1, 1)
        if timings.get("decode_s"):
            timings["decode_tokens_per_s"] = n / timings["decode_s"]
        return ChatResult(text=end.text, token_ids=list(seq.output_ids), prompt_tokens=len(seq.prompt_ids),
                          finish_reason=end.reason, media=list(media), timings=timings,
                          cached_tokens=seq.cached_tokens)


def check_processor(path: Path, spec, config) -> None:
    """preprocessor_config.json must cut images the way the vision tower reads them: a patch size of
    0 or one that differs from config.json would fail on the first image or give wrong features."""
    from .errors import CheckpointError

    v = config.vision
    for ours, theirs in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                         ("temporal_patch_size", "temporal_patch_size")):
        if getattr(spec, ours) != getattr(v, theirs):
            raise CheckpointError(f"{path / 'preprocessor_config.json'}: {ours} is {getattr(spec, ours)!r}, but "
                                  f"config.json's vision_config.{theirs} is {getattr(v, theirs)}")
    for n in ("min_pixels", "max_pixels"):
        val = getattr(spec, n)
        if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
            raise CheckpointError(f"{path / 'preprocessor_config.json'}: {n} must be a positive integer, got {val!r}")


def load(path: str | Path, dtype: str | torch.dtype = "float32", device: str = "cpu", max_batch: int = 8,
         quantize: str | None = None, compile: bool = False, check_weights: bool | None = None,
         adapter: str | Path | None = None) -> Pipeline:
    """Load a Qwen2.5-VL checkpoint directory (or hub id) into a Pipeline.

    The model is prepared for inference: the decoder's q/k/v and gate/up projections are fused
    (fast/fuse.py), and with quantize="int8" the decoder and LM head get weight-only int8
    (fast/int8.py), with quantize="int4" group-wise 4-bit weights (fast/int4.py; AWQ checkpoints
    are 4-bit already and load so without it). compile=True runs decode steps through torch.compile
    (engine.Engine). check_weights=False (or QWENVL_CHECK_WEIGHTS=0) skips the NaN/inf pass over the
    weights on load. adapter: a peft LoRA directory (adapter_config.json + adapter_model.safetensors,
    transformers module names, as `qwenvl train --lora` writes) folded into the weights at load
    (model/lora.py).
    For training, load the model with `qwenvl.model.weights.load_model`."""
    from .fast import load_checkpoint, prepare
    from .processing import Processor

    if quantize not in (None, "int8", "int4"):
        raise ValueError(f"quantize must be None, 'int8' or 'int4', got {quantize!r}")

    path = resolve_checkpoint(path)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    model = load_checkpoint(path, dtype=dtype, device=device, check_weights=check_weights)
    if adapter is not None:
        from .model.lora import apply_adapter
        apply_adapter(model, adapter)
    model = prepare(model, quantize)
    processor = Processor.from_pretrained(path, max_length=model.config.text.max_position_embeddings)
    check_processor(path, processor.spec, model.config)
    gen_path = path / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    pipe = Pipeline(model, processor, gen, path, max_batch=max_batch, compile=compile)
    pipe.adapter = Path(adapter) if adapter is not None else None   # what was folded in, if anything
    return pipe
