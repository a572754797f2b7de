"""SamplingParams, the one description of how to pick tokens, and the pure functions that apply it.

The order and rules are those of transformers' logits processors (repetition penalty over prompt and
output, then temperature, top-k, top-p), so seeded greedy and sampled runs line up with the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float | None = None        # 0 = greedy; None = the checkpoint's generation_config
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()               # stop strings (not included in the output text)
    stop_token_ids: tuple[int, ...] = ()     # in addition to the checkpoint's eos ids
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()   # (token id, bias) pairs added to the logits
    logprobs: int | None = None              # None: none; k >= 0: the chosen token's logprob and the top k

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b)) for t, b in bias))
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "SamplingParams":
        names = {f.name for f in fields(cls)}
        bad = sorted(set(kwargs) - names)
        if bad:
            raise TypeError(f"unknown sampling parameter(s): {', '.join(bad)}")
        return cls(**{k: v for k, v in kwargs.items() if v is not None or k == "temperature"})

    def with_defaults(self, defaults: dict) -> "SamplingParams":
        """Fill the unset fields from a generation_config.json. A config without do_sample means greedy."""
        updates = {}
        if self.temperature is None:
            updates["temperature"] = defaults.get("temperature", 1.0) if defaults.get("do_sample") else 0.0
        for name in ("top_p", "top_k", "repetition_penalty"):
            if getattr(self, name) is None and name in defaults:
                updates[name] = defaults[name]
        return replace(self, **updates)

    @property
    def greedy(self) -> bool:
        return not self.temperature  # None or 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits [V]; seen: token ids so far (prompt + output). Positive scores are divided, negative multiplied."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    score = logits.gather(0, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(0, seen, score)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum <= (1 - top_p)
        remove[..., -1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def apply_logit_bias(logits: torch.Tensor, bias: tuple[tuple[int, float], ...]) -> torch.Tensor:
    ids = torch.tensor([t for t, _ in bias], device=logits.device)
    return logits.index_add(0, ids, torch.tensor([b for _, b in bias], dtype=logits.dtype, device=logits.device))


def process_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor) -> torch.Tensor:
    """The logits every token choice starts from: float32, logit_bias, then the repetition penalty (vLLM's
    order). Logprobs are reported from these, before temperature and top-k/top-p (OpenAI's definition)."""
    logits = logits.float()
    if params.logit_bias:
        logits = apply_logit_bias(logits, params.logit_bias)
    if params.repetition_penalty is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick a token from processed logits [V] (greedy, or temperature then top-k/top-p)."""
    if params.greedy:
        return int(logits.argmax())
    logits = filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    # softmax of logits with a finite maximum is finite; an overflow (+inf) or NaN here would make
    # multinomial fail (on CUDA, with a device assert that poisons the whole context)
    if not torch.isfinite(logits.max()):
        raise ValueError("the sampling parameters (temperature, repetition_penalty) make the token scores "
                         "overflow to non-finite values")
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def next_token(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor,
               generator: torch.Generator | None) -> int:
    """Pick the next token from last-position logits [V]."""
    return sample(process_logits(logits, params, seen), params, generator)


def make_generator(seed: int | None, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


__all__ = ["SamplingParams", "next_token", "process_logits", "sample", "make_generator", "apply_repetition_penalty",
           "apply_logit_bias", "filter_top_k_top_p"]
