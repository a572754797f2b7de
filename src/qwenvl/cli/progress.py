"""Progress on stderr for the long steps of a command (tqdm): loading the model, reading the inputs plus
the vision tower and prefill, then the tokens as they come (or the text itself when it streams to a
terminal). Silent with --quiet or when stderr is not a terminal, like pip, git and tqdm's users expect.
Without tqdm installed, each step prints one plain line instead."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager


def wanted(args) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


class Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        try:
            from tqdm import tqdm
            self._tqdm = tqdm
        except ImportError:    # tqdm comes with the train/eval/all extras
            self._tqdm = None

    @contextmanager
    def step(self, desc: str):
        """A step that reports nothing while it runs: its name and the time spent, refreshed twice a second.
        Yields a function that ends the display early (the step's end is known before the block's)."""
        if not self.enabled:
            yield lambda: None
            return
        if self._tqdm is None:
            print(f"{desc} ...", file=sys.stderr, flush=True)
            yield lambda: None
            return
        bar = self._tqdm(total=None, desc=desc, bar_format="{desc} {elapsed}", file=sys.stderr, leave=False)
        stop = threading.Event()
        lock = threading.Lock()

        def tick():
            while not stop.wait(0.5):
                with lock:
                    if not bar.disable:
                        bar.refresh()

        def end():
            stop.set()
            with lock:
                if not bar.disable:
                    bar.close()
        t = threading.Thread(target=tick, daemon=True)
        t.start()
        try:
            yield end
        finally:
            end()
            t.join()

    def counter(self, desc: str, unit: str, total: int | None = None):
        """A live count (tokens, pages, requests); an object with update(n) and close() either way."""
        if not self.enabled:
            return _Null()
        if self._tqdm is None:
            print(f"{desc} ...", file=sys.stderr, flush=True)
            return _Null()
        return self._tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


class _Null:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description_str(self, *a, **k) -> None:
        pass

    def close(self) -> None:
        pass


def generate(pipe, messages, progress: Progress, *, desc: str = "", echo=None, count: bool | None = None,
             **sampling):
    """Run one conversation through `pipe.stream` and return its ChatResult, with progress: a step over
    preprocessing + vision tower + prefill (until the first token), then the text written to `echo` (a
    stream, for answers printed as they come) and/or a live token count on stderr (`count`; by default
    when nothing is echoed)."""
    count = echo is None if count is None else count
    prefix = f"{desc}: " if desc else ""
    bar = None
    with progress.step(f"{prefix}reading inputs, vision tower, prefill") as prefill_done:
        def on_token(n: int) -> None:
            nonlocal bar
            prefill_done()
            if count:
                if bar is None:
                    bar = progress.counter(f"{prefix}generating", "tok", total=sampling.get("max_new_tokens"))
                bar.update(n - bar.n)

        gen = pipe.stream(messages, on_token=on_token, **sampling)
        try:
            while True:
                delta = next(gen)
                if echo is not None and delta:
                    echo.write(delta)
                    echo.flush()
        except StopIteration as stop:
            return stop.value
        finally:
            if bar is not None:
                bar.close()
