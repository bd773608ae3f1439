"""The evaluation's one progress bar: images x attack runs, moved by the DIP fits as they go.

A chunk of a DIP defense costs minutes (one fit per defended batch, fifteen for BPDA-15), so a
bar that moved once per chunk sat at 0% through the first minutes of the demo. Here each fit's
progress (``dipdefense.common.progress``) moves the bar within the chunk's share: the share is
split over the fits the run is expected to cost (a guess for its first chunk, then what that
chunk took), held below the share until the chunk's records are written, and set exactly then.
"""

import contextlib
import sys
from collections.abc import Iterator

from tqdm.auto import tqdm

from dipdefense.common.progress import listening_to_fits

HELD_BACK = 0.95  # of a chunk's share, until its records are written


class ChunkProgress:
    def __init__(self, total: int, desc: str) -> None:
        self.bar = tqdm(
            total=total,
            desc=desc,
            dynamic_ncols=True,
            # a float position: show whole image-attacks; a log file gets a line per 30 s, a terminal 10 a second
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} image-attacks [{elapsed}<{remaining}]",
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
        self.fits_per_run: dict[str, int] = {}

    def skip(self, images: int) -> None:
        """A chunk whose records exist already (a resumed run)."""
        self.bar.update(images)

    @contextlib.contextmanager
    def chunk_of(self, run_id: str, images: int, guess: int) -> Iterator[None]:
        """One run on one chunk of ``images`` images; its fits move the bar as they go."""
        start, fits, expected = self.bar.n, 0, max(self.fits_per_run.get(run_id, guess), 1)

        def on_fit(done: int, total: int) -> None:
            nonlocal fits
            fits += done == 0
            share = min((max(fits - 1, 0) + done / max(total, 1)) / expected, HELD_BACK)
            target = start + images * share
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)

        with listening_to_fits(on_fit):
            yield
        self.fits_per_run[run_id] = max(fits, 1)
        self.bar.update(start + images - self.bar.n)

    def close(self) -> None:
        self.bar.close()
