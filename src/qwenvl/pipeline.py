"""`qwenvl.load(...)` -> Pipeline: the network, the processor and the engine behind one small API.

    pipe = qwenvl.load("path/to/Qwen2.5-VL-3B-Instruct", dtype="bfloat16")
    batch = pipe.processor(messages)            # tensors named and laid out as transformers does
    logits = pipe.model(**batch).logits
    result = pipe.chat(messages, max_new_tokens=64, temperature=0)
    for delta in pipe.stream(messages): print(delta, end="")
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .engine.engine import Engine, Sequence, generate
from .engine.sampling import SamplingParams
from .model import QwenVL
from .model.weights import load_model
from .processing.stops import StopMatcher
from .processing.tokenizer import StreamDecoder

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}

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

    # ------------------------------------------------------------------ requests

    def sampling_params(self, params: SamplingParams | None = None, **kwargs) -> SamplingParams:
        if params is None:
            params = SamplingParams.from_kwargs(**kwargs)
        elif kwargs:
            raise TypeError("pass either params= or sampling keyword arguments, not both")
        return params.with_defaults(self.generation_config)

    def sequence(self, conversation: list[dict], params: SamplingParams, **template_kwargs) -> tuple[Sequence, list]:
        """template_kwargs go to the chat template (e.g. tools=[...])."""
        batch = self.processor(conversation, **template_kwargs)
        device = self.model.device
        media = {k: batch[k].to(device) for k in MEDIA_KEYS if k in batch}
        ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
        seq = Sequence(prompt_ids=ids, params=params, media=media, eos_ids=self.eos_ids)
        return seq, batch.media[0]

    # ------------------------------------------------------------------ chat

    def chat(self, messages: list, params: SamplingParams | None = None, **sampling):
        """One conversation -> ChatResult; a list of conversations -> list of ChatResult (decoded together)."""
        batched = bool(messages) and isinstance(messages[0], (list, tuple))
        conversations = messages if batched else [messages]
        params = self.sampling_params(params, **sampling)
        results = self._run(conversations, params)
        return results if batched else results[0]

    def stream(self, messages: list, params: SamplingParams | None = None, on_token=None, **sampling):
        """Yield text deltas of one conversation's answer as they are produced. The generator's return
        value (StopIteration.value, or `yield from`) is the full ChatResult. on_token(n), if given, is
        called with the number of tokens generated so far after each step (the first call marks the
        end of the vision tower and prefill), text or not."""
        params = self.sampling_params(params, **sampling)
        holder: list[ChatResult] = []
        yield from self._stream_one(messages, params, holder, on_token)
        return holder[0]

    def _stream_one(self, messages, params, holder, on_token=None):
        seq, media = self.sequence(messages, params)
        engine = Engine(self.model, max_batch=1, max_len=self._max_len([seq]), compile=self.compile,
                        prefix_cache=self.prefix_cache)
        text = TextTracker(self.processor.tokenizer, params.stop)
        start = time.perf_counter()
        for s, _ in generate(engine, [seq]):
            if on_token is not None:
                on_token(len(s.output_ids))
            delta = text.update(s.output_ids)
            if text.stopped:
                s.finish("stop")
            if delta:
                yield delta
        delta = text.finish(seq.output_ids)
        if delta:
            yield delta
        if seq.error is not None:   # the engine ended it (NaN logits, a failing sampler): say so, loudly
            raise seq.error
        holder.append(self._result(seq, media, text, start))

    def _max_len(self, seqs: list[Sequence]) -> int:
        need = max(len(s.prompt_ids) + s.params.max_new_tokens for s in seqs)
        limit = self.config.text.max_position_embeddings
        longest = max(len(s.prompt_ids) for s in seqs)
        if longest >= limit:
            raise ValueError(f"prompt has {longest} tokens, over the model's context of {limit}")
        return min(need, limit)

    def _run(self, conversations, params) -> list[ChatResult]:
        pairs = [self.sequence(c, params) for c in conversations]
        seqs = [s for s, _ in pairs]
        engine = Engine(self.model, max_batch=min(self.max_batch, len(seqs)), max_len=self._max_len(seqs),
                        compile=self.compile, prefix_cache=self.prefix_cache)
        trackers = {id(s): TextTracker(self.processor.tokenizer, params.stop) for s in seqs}
        start = time.perf_counter()
        for s, _ in generate(engine, seqs):
            t = trackers[id(s)]
            if params.stop:
                t.update(s.output_ids)
                if t.stopped:
                    s.finish("stop")
        failed = [s.error for s in seqs if s.error is not None]
        if failed:   # in a batch the others finished; the call still fails, as it would have before
            raise failed[0]
        results = []
        for s, media in pairs:
            t = trackers[id(s)]
            t.finish(s.output_ids)
            results.append(self._result(s, media, t, start))
        return results

    def _result(self, seq: Sequence, media, text: "TextTracker", start: float) -> ChatResult:
        timings = dict(seq.timings)
        timings["total_s"] = time.perf_counter() - start
        n = max(len(seq.output_ids) - 1, 1)
        if timings.get("decode_s"):
            timings["decode_tokens_per_s"] = n / timings["decode_s"]
        return ChatResult(text=text.text, token_ids=list(seq.output_ids), prompt_tokens=len(seq.prompt_ids),
                          finish_reason=seq.finish_reason or "stop", media=list(media), timings=timings,
                          cached_tokens=seq.cached_tokens)


class TextTracker:
    """Turns a growing list of output ids into text deltas (incremental detokenizing: a multi-byte
    character is never split) and cuts the text at the first stop string, holding back a possible
    start of one until it is decided."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.decoder = StreamDecoder(tokenizer, skip_special_tokens=True)
        self.stop = stop
        self.matcher = StopMatcher(stop)   # incremental: each new character costs O(1) per stop string
        self.fed = 0
        self.raw = ""       # everything decoded so far
        self.text = ""      # what has been emitted (never past a stop string)
        self.stopped = False

    def update(self, ids: list[int]) -> str:
        if len(ids) > self.fed:
            self._add(self.decoder.add(ids[self.fed:]))
            self.fed = len(ids)
        return self._emit(final=False)

    def finish(self, ids: list[int]) -> str:
        """The last delta once the sequence has ended: held-back text is final now."""
        self.update(ids)
        self._add(self.decoder.flush())
        return self._emit(final=True)

    def _add(self, piece: str) -> None:
        self.raw += piece
        self.matcher.feed(piece)

    def _emit(self, final: bool) -> str:
        if self.stopped:
            return ""
        end = len(self.raw)
        if self.matcher.match is not None:
            end, self.stopped = self.matcher.match, True
        elif not final:
            end -= self.matcher.pending
        delta = self.raw[len(self.text):end]
        self.text += delta
        return delta


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
