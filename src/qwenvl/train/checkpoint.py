"""Training checkpoints (resume) and the exported Hugging Face model.

A checkpoint is a directory `DIR/checkpoints/step-NNNNNN/`:
- model and optimizer state through torch.distributed.checkpoint (each rank writes its shards; the
  same code runs in one process);
- `rank-R.pt`: that rank's data position and RNG states; `trainer.pt`: step and scheduler;
- `manifest.json`, written last: every file's size, so a truncated or half-copied checkpoint is told
  from an intact one without loading it.
It is written to `.tmp-step-NNNNNN`, flushed to disk, renamed once complete, then `latest` is
replaced, and only then are older checkpoints pruned: a run killed at any point leaves the previous
checkpoint intact. Resuming (`resume`) takes `latest` if it is intact, else the newest intact
checkpoint, saying what it skipped and why; with no intact checkpoint it refuses (CheckpointError)
rather than start over at step 0.

The export is a directory transformers and `qwenvl.load` both read: config.json and safetensors
shards in the released key layout (model.save_model), plus the base model's tokenizer, processor,
chat template and generation config files.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

from ..errors import CheckpointError
from ..model.weights import save_model

MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


class ResumeMismatch(CheckpointError):
    """The checkpoint is fine but does not fit this run (another number of processes): an older
    checkpoint would not fit either, so there is no fallback."""

# Files of a base checkpoint that travel with the trained weights unchanged.
ASSET_SUFFIXES = (".json", ".txt", ".jinja", ".model", ".tiktoken")
NOT_ASSETS = {"config.json", "model.safetensors.index.json"}


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _fsync(path: Path) -> None:
    """Flush a file or a directory entry to disk (so a rename that follows cannot expose torn data)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def save(root: Path, step: int, model, optimizer, scheduler, data_state: dict, keep: int = 2) -> Path:
    root = Path(root)
    name = f"step-{step:06d}"
    tmp, final = root / f".tmp-{name}", root / name
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
    torch.save({"data": data_state, "rng": rng_state()}, tmp / f"rank-{_rank()}.pt")
    if _rank() == 0:
        torch.save({"step": step, "scheduler": scheduler.state_dict()}, tmp / "trainer.pt")
    _barrier()
    if _rank() == 0:
        files = {}
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                _fsync(f)
                files[f.relative_to(tmp).as_posix()] = f.stat().st_size
        world = dist.get_world_size() if dist.is_initialized() else 1
        _write_atomic(tmp / MANIFEST, json.dumps({"step": step, "world": world, "files": files}, indent=1))
        # a checkpoint of the same step (damaged, or the one resumed from) is replaced, never deleted first
        old = root / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync(root)
        _write_atomic(root / "latest", name)
        shutil.rmtree(old, ignore_errors=True)
        prune(root, step, keep)
    _barrier()
    return final


def prune(root: Path, step: int, keep: int) -> None:
    """Keep checkpoint `step` and the keep-1 newest older ones; later steps (another attempt's) stay."""
    if keep <= 0:
        return
    older = [p for s, p in steps(root) if s < step]
    for p in older[keep - 1:]:
        shutil.rmtree(p, ignore_errors=True)


def steps(root: Path) -> list[tuple[int, Path]]:
    """The step-NNNNNN folders under root, newest first. A save killed between its two renames leaves
    step N only as `.old-step-N` (the previous copy) or `.tmp-step-N` (the new one, complete once its
    manifest exists): those stand in for a missing step-N."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = {int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))}
    for prefix in (".tmp-", ".old-"):  # the new copy (complete: it has its manifest) before the old one
        for p in root.glob(prefix + "step-*"):
            m = STEP_DIR.match(p.name[len(prefix):])
            if m and p.is_dir() and int(m.group(1)) not in found and (prefix == ".old-" or (p / MANIFEST).exists()):
                found[int(m.group(1))] = p
    return sorted(found.items(), reverse=True)


def damage(path: Path) -> str | None:
    """Why the checkpoint folder cannot be resumed from without loading it, or None if it looks intact."""
    path = Path(path)
    if not path.is_dir():
        return "missing"
    manifest = path / MANIFEST
    if not manifest.exists():  # written before manifests: the files every checkpoint has
        lacking = [f for f in ("trainer.pt", "rank-0.pt", ".metadata") if not (path / f).is_file()]
        return f"incomplete: no {MANIFEST} and no {', '.join(lacking)}" if lacking else None
    try:
        files = json.loads(manifest.read_bytes())["files"]
        files = {str(k): int(v) for k, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    for rel, size in files.items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != size:
            return f"{rel} is {f.stat().st_size} bytes, {size} were written (truncated or overwritten)"
    return None


def latest(root: Path) -> Path | None:
    """The checkpoint `resume` would try first: `latest` if intact, else the newest intact one."""
    root = Path(root)
    pointer = _pointer(root)
    if pointer is not None and damage(root / pointer) is None:
        return root / pointer
    return next((p for _, p in steps(root) if damage(p) is None), None)


def _pointer(root: Path) -> str | None:
    try:
        name = (root / "latest").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if STEP_DIR.match(name) else None


def check_out(out: Path, resume: bool) -> None:
    """Before a run: refuse what would overwrite a previous run's progress. Without --resume, OUT must
    hold no checkpoints; with --resume and no checkpoint at all, OUT must hold no trace of steps
    (metrics or final/), since the run could only start over at step 0."""
    out = Path(out)
    root = out / "checkpoints"
    saved = steps(root) or (root / "latest").exists()
    if not resume:
        if saved:
            raise CheckpointError(f"{out} already holds checkpoints ({root}): pass --resume to continue that "
                                  "run, or choose another --out (nothing was changed)")
        return
    if saved:
        return  # resume() picks one, or refuses
    done = last_logged_step(out / "metrics.jsonl")
    if done or (out / "final").exists():
        what = f"metrics.jsonl logs {done} steps" if done else "final/ exists"
        raise CheckpointError(f"--resume: {root} holds no checkpoint, but {out} holds a previous run ({what}); "
                              "it saved none (see --save-every), so there is nothing to resume: starting over "
                              "would overwrite it. Use another --out, or run without --resume to start over")
    if os.environ.get("RANK", "0") == "0":
        print(f"--resume: nothing saved in {root} yet: starting at step 0", file=sys.stderr)


def resume(root: Path, model, optimizer, scheduler) -> tuple[int, dict, Path] | None:
    """Restore the newest intact checkpoint under root: `latest` if intact, else the newest intact
    step folder. Skipped ones are reported on stderr with the reason. None when nothing was ever saved;
    CheckpointError when checkpoints exist but none can be loaded."""
    root = Path(root)
    found = steps(root)
    named = _pointer(root)
    if not found and not (root / "latest").exists():
        return None
    problems = []
    if (root / "latest").exists() and named is None:
        problems.append("latest does not name a step folder")
    order = [p for _, p in found]
    if named is not None:
        if (root / named).is_dir():
            order.remove(root / named)
            order.insert(0, root / named)
        else:
            problems.append(f"latest names {named}, which is missing")
    for path in order:
        why = damage(path)
        if why is None:
            try:
                step, data = load(path, model, optimizer, scheduler)
            except ResumeMismatch:
                raise
            except (Exception, CheckpointException) as e:  # damage no manifest shows (older checkpoints, bit rot)
                why = f"cannot be loaded ({_cause(e)})"
            if not _everyone(why is None):  # ranks must resume from the same step, or all fall back
                why = why or "cannot be loaded on another rank"
            if why is None:
                if _rank() == 0:
                    for p in problems:
                        print(f"resume: skipped {p}", file=sys.stderr)
                    if path.name.startswith("."):  # a stand-in: make it the step folder again
                        target = root / path.name.removeprefix(".tmp-").removeprefix(".old-")
                        print(f"resume: {path.name} restored as {target.name}", file=sys.stderr)
                        os.replace(path, target)
                        _fsync(root)
                        _write_atomic(root / "latest", target.name)
                _barrier()
                return step, data, root / path.name.removeprefix(".tmp-").removeprefix(".old-")
        problems.append(f"{path.name}: {why}")
    raise CheckpointError(f"--resume: no intact checkpoint in {root} ({'; '.join(problems)}); nothing was "
                          "changed. Repair or remove the damaged folders, or use another --out")


def _everyone(ok: bool) -> bool:
    """True on every rank iff `ok` on every rank."""
    if not dist.is_initialized():
        return ok
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(ok)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _cause(e: BaseException) -> str:
    """One line for a load failure; DCP wraps each rank's exception in a CheckpointException."""
    if isinstance(e, CheckpointException) and getattr(e, "failures", None):
        inner = next(iter(e.failures.values()))
        e = getattr(inner, "exc", inner)
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def last_logged_step(metrics: Path) -> int:
    """The highest step logged in metrics.jsonl (0 if none)."""
    best = 0
    for rec in _metric_lines(metrics):
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            best = max(best, rec["step"])
    return best


def _metric_lines(metrics: Path):
    try:
        raw = Path(metrics).read_bytes()
    except FileNotFoundError:
        return
    for line in raw.splitlines():
        try:
            yield json.loads(line)
        except (ValueError, RecursionError):
            yield None  # a line torn by a kill


def trim_metrics(metrics: Path, step: int) -> None:
    """Cut metrics.jsonl back to the resumed `step` (its rows up to it; summaries and torn lines go): the
    continued run logs the rest, so no step is logged twice and there is one loss curve. A fresh run
    (step 0) starts it anew."""
    metrics = Path(metrics)
    if not metrics.exists():
        return
    keep = [json.dumps(r) for r in _metric_lines(metrics)
            if isinstance(r, dict) and isinstance(r.get("step"), int) and r["step"] <= step]
    _write_atomic(metrics, "".join(x + "\n" for x in keep))


def load(path: Path, model, optimizer, scheduler) -> tuple[int, dict]:
    """Restore model, optimizer, scheduler and RNG in place; returns (step, this rank's data state)."""
    path = Path(path)
    mine = path / f"rank-{_rank()}.pt"
    world = dist.get_world_size() if dist.is_initialized() else 1
    try:
        saved = json.loads((path / MANIFEST).read_bytes()).get("world", world)
    except (OSError, ValueError, AttributeError):
        saved = None if not mine.exists() and (path / "rank-0.pt").exists() else world
    if saved != world:
        raise ResumeMismatch(f"{path} was written by {saved or 'fewer'} processes, this run has {world}: resume "
                             "with the same number of processes")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer = torch.load(path / "trainer.pt", weights_only=False)
    rank_state = torch.load(mine, weights_only=False)
    m = STEP_DIR.match(path.name.removeprefix(".tmp-").removeprefix(".old-"))
    if m and trainer["step"] != int(m.group(1)):
        raise CheckpointError(f"{path}: trainer.pt is at step {trainer['step']}, not the folder's")
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(rank_state["rng"])
    return trainer["step"], rank_state["data"]


def export(model, base: Path, out: Path, dtype: torch.dtype | None = None) -> Path | None:
    """Write the trained model as a Hugging Face directory `out` (rank 0 writes; all ranks must call
    this under FSDP, since gathering the full weights is collective). `model` is a plain QwenVL (LoRA
    merged beforehand), possibly sharded. `dtype`: of the saved tensors (default: the base's)."""
    from ..model.qwen25vl import QwenVL

    base, out = Path(base), Path(out)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if _rank() != 0:
        _barrier()
        return None
    if dtype is None:
        name = json.loads((base / "config.json").read_text()).get("torch_dtype", "float32")
        dtype = getattr(torch, name) if isinstance(name, str) and hasattr(torch, name) else torch.float32
    with torch.device("meta"):
        plain = QwenVL(model.config)
    plain.load_state_dict({k: v.to(dtype) for k, v in full.items()}, strict=False, assign=True)
    if model.config.text.tie_word_embeddings:
        plain.lm_head.weight = plain.language_model.embed_tokens.weight
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(plain, tmp)
    for f in base.iterdir():
        if f.is_file() and f.suffix in ASSET_SUFFIXES and f.name not in NOT_ASSETS:
            shutil.copy2(f, tmp / f.name)
    if not (tmp / "generation_config.json").exists():
        cfg = model.config
        eos = list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id, "eos_token_id": eos}, indent=2))
    old = out.with_name(out.name + ".old")  # the previous export stays until the new one is in place
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return out
