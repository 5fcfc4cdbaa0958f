"""Progress of long passes, on stderr, only when asked for."""

import importlib.util
import sys
import time


class Progress:
    """Progress of passes on stderr, shown only when ``enabled``.

    With ``tqdm`` installed (an optional extra: ``pip install -e ".[progress]"``)
    each pass is a bar: samples done, rate and time left.  Without it, a
    plain line every ~10% of a pass, which works in terminals, notebooks and
    CI logs alike.  Other messages (the fit's plan, "done") are plain lines
    either way.

    Parameters
    ----------
    owner : str
        Prefix of every line (the estimator or function that reports).
    enabled : bool
    """

    def __init__(self, owner, enabled):
        self.owner = owner
        self.enabled = bool(enabled)
        self._start = time.perf_counter()

    def __call__(self, message):
        if self.enabled:
            elapsed = time.perf_counter() - self._start
            print(f"[{self.owner}] {elapsed:7.1f}s {message}", file=sys.stderr, flush=True)

    def samples(self, batches, n_samples, what, size=len):
        """Wrap an iterable of batches; ``n_samples`` may be None (not known yet)."""
        if self.enabled and _has_tqdm():
            yield from self._bar(batches, n_samples, what, size)
            return
        done = 0
        step = max((n_samples or 0) // 10, 1)
        next_report = step
        for i, batch in enumerate(batches):
            yield batch
            done += size(batch)
            if n_samples is None:
                if (i + 1) % 10 == 0:
                    self(f"{what}: {done} samples")
            elif done >= next_report or done == n_samples:
                self(f"{what}: {done}/{n_samples} samples")
                next_report = done + step

    def _bar(self, batches, n_samples, what, size):
        from tqdm.auto import tqdm

        bar = tqdm(
            total=n_samples,
            desc=f"[{self.owner}] {what}",
            unit="sample",
            unit_scale=True,
            file=sys.stderr,
            leave=True,
            dynamic_ncols=True,
        )
        try:
            for batch in batches:
                yield batch
                bar.update(size(batch))
        finally:
            bar.close()


def _has_tqdm():
    return importlib.util.find_spec("tqdm") is not None
