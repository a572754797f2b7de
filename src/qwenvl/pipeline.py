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

    def sequence(self, conversation: list[dict], params: SamplingParams) -> tuple[Sequence, list]:
        batch = self.processor(conversation)
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

    def stream(self, messages: list, params: SamplingParams | None = None, **sampling):
        """Yield text deltas of one conversation's answer as they are produced. The generator's return
        value (StopIteration.value, or `yield from`) is the full ChatResult."""
        params = self.sampling_params(params, **sampling)
        holder: list[ChatResult] = []
        yield from self._stream_one(messages, params, holder)
        return holder[0]

    def _stream_one(self, messages, params, holder):
        seq, media = self.sequence(messages, params)
        engine = Engine(self.model, max_batch=1, max_len=self._max_len([seq]), compile=self.compile)
        text = TextTracker(self.processor.tokenizer, params.stop)
        start = time.perf_counter()
        for s, _ in generate(engine, [seq]):
            delta = text.update(s.output_ids)
            if text.stopped:
                s.finish("stop")
            if delta:
                yield delta
        delta = text.finish(seq.output_ids)
        if delta:
            yield delta
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
                        compile=self.compile)
        trackers = {id(s): TextTracker(self.processor.tokenizer, params.stop) for s in seqs}
        start = time.perf_counter()
        for s, _ in generate(engine, seqs):
            t = trackers[id(s)]
            if params.stop:
                t.update(s.output_ids)
                if t.stopped:
                    s.finish("stop")
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
                          finish_reason=seq.finish_reason or "stop", media=list(media), timings=timings)


class TextTracker:
    """Turns a growing list of output ids into text deltas (incremental detokenizing: a multi-byte
    character is never split) and cuts the text at the first stop string, holding back a possible
    start of one until it is decided."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.decoder = StreamDecoder(tokenizer, skip_special_tokens=True)
        self.stop = stop
        self.fed = 0
        self.raw = ""       # everything decoded so far
        self.text = ""      # what has been emitted (never past a stop string)
        self.stopped = False

    def update(self, ids: list[int]) -> str:
        if len(ids) > self.fed:
            self.raw += self.decoder.add(ids[self.fed:])
            self.fed = len(ids)
        return self._emit(final=False)

    def finish(self, ids: list[int]) -> str:
        """The last delta once the sequence has ended: held-back text is final now."""
        self.update(ids)
        self.raw += self.decoder.flush()
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self.stopped:
            return ""
        end = len(self.raw)
        for s in self.stop:
            i = self.raw.find(s)
            if i != -1 and i < end:
                end, self.stopped = i, True
        if not self.stopped and not final:
            end -= max((k for s in self.stop for k in range(1, len(s)) if self.raw.endswith(s[:k])), default=0)
        delta = self.raw[len(self.text):end]
        self.text += delta
        return delta


def load(path: str | Path, dtype: str | torch.dtype = "float32", device: str = "cpu", max_batch: int = 8,
         quantize: str | None = None, compile: bool = False, adapter: str | Path | None = None) -> Pipeline:
    """Load a Qwen2.5-VL checkpoint directory (or hub id) into a Pipeline.

    The model is prepared for inference: the decoder's q/k/v and gate/up projections are fused
    (model/fuse.py), and with quantize="int8" the decoder and LM head get weight-only int8
    (engine/quantize.py). compile=True runs decode steps through torch.compile (engine.Engine).
    adapter: a peft LoRA directory (adapter_config.json + adapter_model.safetensors, transformers
    module names, as `qwenvl train --lora` writes) folded into the weights at load (model/lora.py).
    For training, load the model with `qwenvl.model.weights.load_model`."""
    from .engine.quantize import quantize_int8
    from .model.fuse import fuse_projections
    from .processing import Processor

    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")

    path = resolve_checkpoint(path)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    model = load_model(path, dtype=dtype, device=device)
    if adapter is not None:
        from .model.lora import apply_adapter
        apply_adapter(model, adapter)
    model = fuse_projections(model)
    if quantize == "int8":
        quantize_int8(model)
    processor = Processor.from_pretrained(path, max_length=model.config.text.max_position_embeddings)
    gen_path = path / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    pipe = Pipeline(model, processor, gen, path, max_batch=max_batch, compile=compile)
    pipe.adapter = Path(adapter) if adapter is not None else None   # what was folded in, if anything
    return pipe
