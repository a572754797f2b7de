"""Data sources beyond a JSONL file: synthetic data drawn on the fly, and a curriculum of sources.

    --data synth:ground=3,point=1,count=1      # qwenvl.synth tasks with mixing weights

A synthetic stream draws every example fresh (a scene costs milliseconds, so a fixed set would only
waste the budget), seeded by (seed, rank, chunk), so `state()` (chunks done, micro-batches taken from
the current one) resumes exactly, like `data.Stream`. A `Curriculum` runs one source per stage, each
for a number of optimizer steps, and resumes inside whichever stage it was in.
"""

from __future__ import annotations

import random

from .data import BadRecord, DataOptions, Packing, Stream, encode, read_records, report
from .pack import collate, plan_rows

SYNTH_PREFIX = "synth:"


def parse_mix(spec: str) -> dict[str, float]:
    """'synth:ground=3,count' -> {"ground": 3.0, "count": 1.0}, checked against qwenvl.synth.TASKS."""
    from .. import synth

    body = spec[len(SYNTH_PREFIX):] if spec.startswith(SYNTH_PREFIX) else spec
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        name, _, weight = part.partition("=")
        if name not in synth.TASKS:
            raise ValueError(f"{spec!r}: unknown synthetic task {name!r}; choose from {', '.join(synth.TASKS)}")
        try:
            mix[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"{spec!r}: weight of {name!r} is not a number: {weight!r}") from None
        if not mix[name] > 0:
            raise ValueError(f"{spec!r}: weight of {name!r} must be > 0")
    if not mix:
        raise ValueError(f"{spec!r}: no synthetic task named (e.g. synth:ground=2,count=1)")
    return mix


def task_options(sample_kw: dict, task: str) -> dict:
    """qwenvl.synth.sample's keyword arguments for `task`: the shared options with the task's own on top,
    {"order": "random", "per_task": {"ground": {"order": "text_first"}}} (a mix may want one task asked the
    way a task command asks it and another the way chat does)."""
    own = (sample_kw.get("per_task") or {}).get(task, {})
    return {**{k: v for k, v in sample_kw.items() if k != "per_task"}, **own}


class SynthStream(Packing):
    """Endless micro-batches of freshly drawn synthetic conversations (same interface as data.Stream)."""

    def __init__(self, mix: dict[str, float], processor, config, opts: DataOptions, rank: int = 0,
                 world: int = 1, pad_id: int = 0, sample_kw: dict | None = None):
        super().__init__(opts)
        self.mix, self.processor, self.config = mix, processor, config
        self.rank, self.world, self.pad_id = rank, world, pad_id
        s = processor.settings
        # Answers are in pixels of the processor's resized input, so the generator uses its budget.
        self.sample_kw = {"min_pixels": processor.min_pixels, "max_pixels": processor.max_pixels,
                          "video_max_pixels": s.video_max_pixels, **(sample_kw or {})}
        from .. import synth

        stray = sorted(set(self.sample_kw.get("per_task") or {}) - set(synth.TASKS))
        if stray:
            raise ValueError(f"synth per_task: unknown synthetic task {', '.join(map(repr, stray))}; "
                             f"choose from {', '.join(synth.TASKS)}")
        self.chunk, self.taken = 0, 0
        self._batches: list | None = None

    def examples(self, chunk: int, n: int):
        """The chunk's examples: (where, Example). Deterministic in (seed, rank, chunk)."""
        from .. import synth

        rng = random.Random(f"{self.opts.seed}/{self.rank}/{chunk}")
        tasks, weights = list(self.mix), list(self.mix.values())
        for i in range(n):
            task = rng.choices(tasks, weights)[0]
            yield f"synth:{task}#{chunk}.{i}", synth.sample(task, random.Random(rng.getrandbits(64)),
                                                          **task_options(self.sample_kw, task))

    def _fill(self) -> None:
        units = []
        for where, ex in self.examples(self.chunk, self.opts.chunk):
            try:
                sample = encode(self.processor, ex.messages, self.config, where)
                if len(sample) > self.opts.max_len:
                    raise BadRecord(f"{where}: {len(sample)} tokens exceed --max-len {self.opts.max_len}")
                units.append([sample])
            except BadRecord as e:
                report(e, self.opts.on_bad)
        rows = plan_rows(units, self.opts.max_len, self.opts.pack)
        per = self.opts.batch_size
        self._batches = [rows[i:i + per] for i in range(0, len(rows), per)]

    def next(self):
        if self._batches is None:
            self._fill()
        while self.taken >= len(self._batches):
            self.chunk, self.taken = self.chunk + 1, 0
            self._fill()
        rows = self._batches[self.taken]
        self.taken += 1
        batch = collate(rows, self.pad_id, self.config.vision.merge_unit)
        self._count(batch)
        return batch

    def state(self) -> dict:
        return {"chunk": self.chunk, "taken": self.taken}

    def load_state(self, s: dict) -> None:
        self.chunk, self.taken = s["chunk"], s["taken"]
        self._batches = None
        if self.taken:
            self._fill()



def make_stream(data: str, processor, config, opts: DataOptions, rank: int, world: int, pad_id: int,
                preference: bool, data_root=None, sample_kw: dict | None = None):
    """A stream over `data`: a JSONL path or a `synth:` mix."""
    if data.startswith(SYNTH_PREFIX):
        if preference:
            raise ValueError(f"{data}: synthetic data has no preference pairs (stage dpo)")
        return SynthStream(parse_mix(data), processor, config, opts, rank, world, pad_id, sample_kw)
    records = read_records(data, data_root, opts.on_bad)
    if any((r.rejected is not None) != preference for r in records):
        raise ValueError(f"{data}: this stage needs " + ("preference records (chosen/rejected)" if preference
                                                          else "conversations, not preference records"))
    return Stream(records, processor, config, opts, rank, world, pad_id, preference)


class Curriculum:
    """Stages run in order, each a stream for `steps` optimizer steps (x grad_accum micro-batches);
    the last one continues past its end if the run is longer."""

    def __init__(self, stages: list[tuple[int, object]], grad_accum: int = 1):
        if not stages:
            raise ValueError("a curriculum needs at least one stage")
        self.stages, self.grad_accum = stages, grad_accum
        self.taken = 0  # micro-batches drawn over all stages

    def current(self) -> int:
        end = 0
        for i, (steps, _) in enumerate(self.stages):
            end += steps * self.grad_accum
            if self.taken < end:
                return i
        return len(self.stages) - 1

    def next(self):
        stream = self.stages[self.current()][1]
        self.taken += 1
        return stream.next()

    def state(self) -> dict:
        return {"taken": self.taken, "stages": [s.state() for _, s in self.stages]}

    def load_state(self, s: dict) -> None:
        self.taken = s["taken"]
        for (_, stream), st in zip(self.stages, s["stages"]):
            stream.load_state(st)

    @property
    def efficiency(self) -> float:
        return self.stages[self.current()][1].efficiency
