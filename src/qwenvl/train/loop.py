"""The training recipe: one loop for every stage (SFT-style next-token loss, or sigmoid DPO against a
frozen reference), one process or many under torchrun (FSDP2).

    cfg = TrainConfig(model="ckpt", data="train.jsonl", out="runs/a", stage="sft", max_steps=100)
    summary = train(cfg)          # -> {"losses": [...], "final": "runs/a/final", ...}

Each optimizer step: take --grad-accum micro-batches from this rank's stream, count the supervised
tokens (or pairs) of the step over all ranks, backpropagate each micro-batch's loss sum divided by
that count, clip, step AdamW and the schedule. Logs go to a tqdm bar and DIR/metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..model.weights import load_model
from . import checkpoint as ckpt
from .data import DataOptions, Stream, read_records
from .sources import SYNTH_PREFIX, Curriculum, make_stream
from .setup import STAGES, add_lora, checkpoint_activations, freeze, lr_lambda, param_groups, shard
from .step import Policy, dpo_terms, run, sequence_logps


@dataclass
class TrainConfig:
    model: str
    data: str
    out: str
    stage: str = "sft"
    max_steps: int = 100
    lr: float | None = None             # default: the stage's
    vision_lr: float | None = None      # default: lr * the stage's vision scale
    merger_lr: float | None = None      # default: lr
    weight_decay: float = 0.0
    warmup: float = 0.03                # a fraction of max_steps (< 1) or a number of steps
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 1
    grad_accum: int = 1
    max_len: int | None = None          # default: the stage's
    pack: bool = False
    chunk: int = 64
    data_root: str | None = None
    on_bad_record: str = "skip"
    fps_range: tuple[float, float] | None = (0.5, 2.0)
    max_pixels: int | None = None
    min_pixels: int | None = None
    video_max_pixels: int | None = None
    beta: float = 0.1                   # DPO
    sft_weight: float = 0.0             # DPO: + this x the chosen replies' token-mean NLL
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    activation_checkpointing: bool = False
    bf16: bool | None = None            # autocast; default: on for CUDA
    eval_data: str | None = None
    eval_every: int = 0
    eval_batches: int = 50
    eval_generate: int = 0              # held-out examples answered by greedy decoding at each eval
    eval_max_new_tokens: int = 96
    loss_weighting: str = "token"       # "token": mean over supervised tokens; "reply": each reply counts once
    curriculum: list | None = None      # [{"steps": N, "data": PATH or "synth:..."}, ...]: stages in order
    synth: dict | None = None           # keyword arguments of qwenvl.synth.sample (turns, size_range, ...)
    save_every: int = 0
    keep: int = 2
    resume: bool = False
    max_minutes: float = 0.0            # > 0: stop (checkpoint and export) after this much wall time
    seed: int = 0
    device: str | None = None
    progress: bool = True
    export: bool = True


def _lrs(cfg: TrainConfig) -> dict[str, float]:
    stage = STAGES[cfg.stage]
    lr = cfg.lr if cfg.lr is not None else stage.lr
    vision = cfg.vision_lr if cfg.vision_lr is not None else lr * (stage.vision_lr_scale or 1.0)
    return {"llm": lr, "merger": cfg.merger_lr if cfg.merger_lr is not None else lr, "vision": vision}


def _all_sum(x: float, device) -> float:
    if not dist.is_initialized():
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t)


class Trainer:
    """Holds what the loop needs; `train()` below is the loop."""

    def __init__(self, cfg: TrainConfig):
        from ..processing import MediaSettings, Processor

        if cfg.stage not in STAGES:
            raise ValueError(f"unknown stage {cfg.stage!r}; choose from {', '.join(STAGES)}")
        if cfg.on_bad_record not in ("skip", "fail"):
            raise ValueError("--on-bad-record must be skip or fail")
        if cfg.loss_weighting not in ("token", "reply"):
            raise ValueError("--loss-weighting must be token or reply")
        if cfg.loss_weighting == "reply" and STAGES[cfg.stage].dpo:
            raise ValueError("--loss-weighting reply applies to next-token stages, not dpo")
        self.cfg, self.stage = cfg, STAGES[cfg.stage]
        self.out = Path(cfg.out)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        if cfg.device:
            self.device = torch.device(cfg.device)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        else:
            self.device = torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.bf16 = cfg.bf16 if cfg.bf16 is not None else self.device.type == "cuda"
        torch.manual_seed(cfg.seed + self.rank)

        # --- model(s)
        self.model = load_model(cfg.model, torch.float32, self.device).train()
        self.ref = None
        self.peft = add_lora(self.model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) if cfg.lora else None
        if self.stage.dpo and not cfg.lora:  # with LoRA the reference is the model with adapters off
            self.ref = load_model(cfg.model, torch.bfloat16 if self.bf16 else torch.float32, self.device)
            self.ref.requires_grad_(False)
        self.trainable = freeze(self.model, self.stage, cfg.lora)
        if cfg.activation_checkpointing:
            checkpoint_activations(self.model)
        self.policy = Policy(self.model)
        self.ref_policy = Policy(self.ref) if self.ref is not None else None
        if self.world > 1:
            from torch.distributed.device_mesh import init_device_mesh
            mesh = init_device_mesh(self.device.type, (self.world,))
            shard(self.policy, mesh, torch.bfloat16 if self.bf16 else None)
            if self.ref_policy is not None:
                shard(self.ref_policy, mesh)

        # --- data
        settings = dataclasses.replace(MediaSettings(), **{k: getattr(cfg, k) for k in (
            "max_pixels", "min_pixels", "video_max_pixels") if getattr(cfg, k) is not None})
        self.processor = Processor.from_pretrained(cfg.model, settings=settings)
        self.opts = DataOptions(max_len=cfg.max_len or self.stage.max_len, pack=cfg.pack, batch_size=cfg.batch_size,
                                chunk=cfg.chunk, fps_range=cfg.fps_range, on_bad=cfg.on_bad_record, seed=cfg.seed)
        pad = self.processor.tokenizer.pad_token_id or 0

        def stream(data: str, synth: dict | None = None):
            return make_stream(data, self.processor, self.model.config, self.opts, self.rank, self.world, pad,
                               self.stage.dpo, cfg.data_root, {**(cfg.synth or {}), **(synth or {})})

        if cfg.curriculum:  # a stage may set its own generator options ("synth": {"objects": [1, 2]})
            self.stream = Curriculum([(int(st["steps"]), stream(st["data"], st.get("synth")))
                                      for st in cfg.curriculum], cfg.grad_accum)
        elif cfg.data:
            self.stream = stream(cfg.data)
        else:
            raise ValueError("no training data: give --data (a JSONL file or synth:TASKS) or a curriculum")
        self.eval_synth = cfg.eval_data if cfg.eval_data and cfg.eval_data.startswith(SYNTH_PREFIX) else None
        self.eval_records = (read_records(cfg.eval_data, cfg.data_root, cfg.on_bad_record)
                             if cfg.eval_data and not self.eval_synth else None)
        self.pad = pad

        # --- optimisation
        self.optimizer = torch.optim.AdamW(param_groups(self.model, _lrs(cfg), cfg.weight_decay),
                                           betas=(0.9, 0.95), eps=1e-8)
        warmup = int(cfg.warmup * cfg.max_steps) if cfg.warmup < 1 else int(cfg.warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(warmup, cfg.max_steps, cfg.min_lr_ratio))

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # ------------------------------------------------------------------------------ one micro-batch

    def loss(self, batch, denom: float, sft_denom: float) -> tuple[torch.Tensor, dict]:
        """The micro-batch's share of the step loss (already divided), and sums for logging."""
        with self.autocast():
            logp, seg = run(self.policy, batch)
        if not self.stage.dpo:
            if self.cfg.loss_weighting == "reply":
                total = -(logp * batch.weights[batch.targets != -100]).sum()
            else:
                total = -logp.sum()
            return total / denom, {"loss_sum": float(total.detach())}
        seqs = sequence_logps(logp, seg, batch.n_samples)
        with torch.no_grad(), self.autocast():
            if self.ref_policy is not None:
                ref_logp, ref_seg = run(self.ref_policy, batch)
            else:
                with self.peft.disable_adapter():
                    ref_logp, ref_seg = run(self.policy, batch)
        ref = sequence_logps(ref_logp.float(), ref_seg, batch.n_samples)
        total, margin = dpo_terms(seqs, ref, self.cfg.beta)
        loss = total / denom
        if self.cfg.sft_weight:
            chosen = seg % 2 == 0
            loss = loss - self.cfg.sft_weight * logp[chosen].sum() / sft_denom
        return loss, {"loss_sum": float(total.detach()), "margin_sum": float(margin.sum()),
                      "acc_sum": float((margin > 0).sum())}

    def counts(self, batches) -> tuple[float, float]:
        """(denominator, chosen-token count) of a step over every rank."""
        if self.stage.dpo:
            pairs = sum(b.n_samples // 2 for b in batches)
            chosen = sum(int(((b.targets != -100) & (b.segments % 2 == 0)).sum()) for b in batches)
            return _all_sum(pairs, self.device), max(1.0, _all_sum(chosen, self.device))
        per = (lambda b: b.n_replies) if self.cfg.loss_weighting == "reply" else (lambda b: b.n_supervised)
        n = _all_sum(sum(per(b) for b in batches), self.device)
        return max(n, 1.0), 1.0

    @torch.no_grad()
    def generate_metrics(self) -> dict[str, float]:
        """Task metrics from greedy answers to held-out examples (the teacher-forced loss can sit on a
        plateau while the model ignores the image; this cannot). Synthetic eval data (`synth:` mix)
        is scored by qwenvl.synth.score per task; a JSONL file by exact match of the last reply."""
        from ..pipeline import Pipeline

        convs, scorers = [], []
        if self.eval_synth:
            from .. import synth
            from .sources import parse_mix, task_options

            kw = {"min_pixels": self.processor.min_pixels, "max_pixels": self.processor.max_pixels,
                  "video_max_pixels": self.processor.settings.video_max_pixels,
                  **(self.cfg.synth or {})}
            for task in parse_mix(self.eval_synth):
                rng = random.Random(f"heldout/{self.cfg.seed}/{task}")  # the same examples at every eval
                own = {**task_options(kw, task), "turns": 1}  # one question each, also where the task asks more
                for _ in range(self.cfg.eval_generate):
                    ex = synth.sample(task, rng, **own)
                    convs.append(ex.messages[:1])
                    scorers.append((task, lambda text, ex=ex, t=task: synth.score(
                        t, ex.targets[0], text, ex.input_size, ex.media_size)))
        else:
            for rec in self.eval_records[:self.cfg.eval_generate]:
                last = max(i for i, m in enumerate(rec.messages) if m["role"] == "assistant")
                want = rec.messages[last]["content"]
                want = want if isinstance(want, str) else "".join(it.get("text", "") for it in want)
                convs.append(rec.messages[:last])
                scorers.append(("exact", lambda text, want=want: {"match": float(text.strip() == want.strip())}))
        was = self.model.training
        self.model.eval()
        try:
            pipe = Pipeline(self.model, self.processor, {"eos_token_id": self.model.config.eos_token_id})
            results = []
            for i in range(0, len(convs), 16):
                results += pipe.chat(convs[i:i + 16], temperature=0, max_new_tokens=self.cfg.eval_max_new_tokens)
        finally:
            self.model.train(was)
        sums: dict[str, list[float]] = {}
        for (task, scorer), r in zip(scorers, results):
            for k, v in scorer(r.text).items():
                sums.setdefault(f"gen_{task}_{k}", []).append(float(v))
        return {k: sum(v) / len(v) for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the held-out file (the first --eval-batches micro-batches of this rank's share)."""
        stream = Stream(self.eval_records, self.processor, self.model.config,
                        DataOptions(**{**asdict(self.opts), "fps_range": None}), self.rank, self.world, self.pad,
                        self.stage.dpo)
        n = min(self.cfg.eval_batches, math.ceil(len(self.eval_records) / max(1, self.opts.batch_size) / self.world))
        batches = [stream.next().to(self.device) for _ in range(max(1, n))]
        denom, sft_denom = self.counts(batches)
        total = 0.0
        for b in batches:
            total += self.loss(b, 1.0, sft_denom)[1]["loss_sum"]
        return _all_sum(total, self.device) / denom


def train(cfg: TrainConfig) -> dict:
    ckpt.check_out(Path(cfg.out), cfg.resume)  # before anything is written: never overwrite a run's progress
    t = Trainer(cfg)
    out, rank = t.out, t.rank
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    step = 0
    if cfg.resume and (got := ckpt.resume(out / "checkpoints", t.model, t.optimizer, t.scheduler)):
        step, data_state, path = got
        t.stream.load_state(data_state)
        if rank == 0:
            print(f"resumed from {path} at step {step}")
    if rank == 0:
        ckpt.trim_metrics(out / "metrics.jsonl", step)  # one curve: no step logged twice
    metrics = open(out / "metrics.jsonl", "a") if rank == 0 else None
    bar = None
    if cfg.progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {cfg.stage}", dynamic_ncols=True)
    losses, start = [], time.perf_counter()
    while step < cfg.max_steps:
        if cfg.max_minutes and time.perf_counter() - start > cfg.max_minutes * 60:
            if rank == 0:
                print(f"stopping at step {step}: --max-minutes {cfg.max_minutes:g} reached")
            break
        t0 = time.perf_counter()
        batches = [t.stream.next().to(t.device) for _ in range(cfg.grad_accum)]
        denom, sft_denom = t.counts(batches)
        sums: dict[str, float] = {}
        for i, b in enumerate(batches):
            if t.world > 1:  # reduce-scatter gradients once, after the last micro-batch
                t.policy.set_requires_gradient_sync(i == len(batches) - 1)
            loss, s = t.loss(b, denom / t.world, sft_denom / t.world)
            loss.backward()
            for k, v in s.items():
                sums[k] = sums.get(k, 0.0) + v
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in t.model.parameters() if p.requires_grad],
                                                   cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        lrs = {g["part"]: g["lr"] for g in t.optimizer.param_groups}
        t.optimizer.step()
        t.scheduler.step()
        t.optimizer.zero_grad(set_to_none=True)
        step += 1

        tokens = _all_sum(sum(b.stats["tokens"] for b in batches), t.device)
        dt = time.perf_counter() - t0
        rec = {"step": step, "loss": _all_sum(sums["loss_sum"], t.device) / denom, "grad_norm": grad_norm,
               "lr": lrs, "tokens": int(tokens), "tokens_per_s": tokens / dt, "step_s": dt,
               "packing_efficiency": t.stream.efficiency}
        if t.stage.dpo:
            rec["margin"] = _all_sum(sums["margin_sum"], t.device) / denom
            rec["accuracy"] = _all_sum(sums["acc_sum"], t.device) / denom
        losses.append(rec["loss"])
        if cfg.eval_every and step % cfg.eval_every == 0:
            if t.eval_records:
                rec["eval_loss"] = t.evaluate()
            if cfg.eval_generate and rank == 0 and t.world == 1:
                rec.update(t.generate_metrics())
        if metrics:
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
        if bar:
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{max(lrs.values()):.2e}", tok_s=f"{rec['tokens_per_s']:.0f}",
                            **({"eval": f"{rec['eval_loss']:.4f}"} if "eval_loss" in rec else {}))
            bar.update(1)
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
            ckpt.save(out / "checkpoints", step, t.model, t.optimizer, t.scheduler, t.stream.state(), cfg.keep)
    if bar:
        bar.close()
    summary = {"steps": step, "losses": losses, "seconds": time.perf_counter() - start,
               "packing_efficiency": t.stream.efficiency, "trainable": t.trainable}
    if t.eval_records:
        summary["eval_loss"] = t.evaluate()
    if cfg.eval_generate and (t.eval_records or t.eval_synth) and rank == 0 and t.world == 1:
        summary.update(t.generate_metrics())
    if cfg.save_every:
        ckpt.save(out / "checkpoints", step, t.model, t.optimizer, t.scheduler, t.stream.state(), cfg.keep)
    if cfg.export:
        if t.peft is not None:   # the peft adapter first: merging removes the LoRA layers
            from .adapter import export_adapter
            summary["adapter"] = str(export_adapter(t.model, t.peft.peft_config["default"], Path(cfg.model),
                                                    out / "adapter"))
        model = t.peft.merge_and_unload() if t.peft is not None else t.model
        summary["final"] = str(ckpt.export(model, Path(cfg.model), out / "final"))
    if metrics:
        metrics.write(json.dumps({"summary": {k: v for k, v in summary.items() if k != "losses"}}) + "\n")
        metrics.close()
    return summary
