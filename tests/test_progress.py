"""The evaluation's progress bar moves with the DIP fits, within a chunk's share, and lands exactly."""

import io

import pytest
import torch

from dipdefense.common.progress import listening_to_fits, report_fit_progress
from dipdefense.dip.engine import DIPSettings, fit_dip
from lightning_modules.progress_bar import HELD_BACK, ChunkProgress
from tests.test_dip_engine import SMALL_EVEN


def test_a_fit_reports_its_start_blocks_and_end():
    heard = []
    settings = DIPSettings(network=SMALL_EVEN.network, iterations=100)
    with listening_to_fits(lambda done, total: heard.append((done, total))):
        fit_dip(torch.rand(2, 3, 16, 16), [0, 1], settings)
    assert heard[0] == (0, 100) and heard[-1] == (100, 100)
    assert [d for d, _ in heard] == [*range(0, 100, 2), 100]  # every 2nd iteration: T / 50
    report_fit_progress(5, 10)  # nobody listens outside the block: nothing happens


def test_the_bar_moves_within_a_chunk_held_below_its_share_then_exact():
    progress = ChunkProgress(total=40, desc="dip")
    progress.bar.fp = io.StringIO()
    positions = []
    with progress.chunk_of("bpda", images=8, guess=2):  # two fits expected
        report_fit_progress(0, 100)
        report_fit_progress(50, 100)
        positions.append(progress.bar.n)  # half of the first of two fits: a quarter of 8 images
        report_fit_progress(100, 100)
        report_fit_progress(0, 100)
        report_fit_progress(100, 100)
        report_fit_progress(0, 100)  # a third fit, unforeseen: the bar waits below the share
        report_fit_progress(100, 100)
        positions.append(progress.bar.n)
    positions.append(progress.bar.n)
    assert positions == pytest.approx([2.0, 8 * HELD_BACK, 8.0])
    with progress.chunk_of("bpda", images=8, guess=2):  # the next chunk expects what this one took
        report_fit_progress(0, 100)
        report_fit_progress(100, 100)
        assert progress.bar.n == pytest.approx(8 + 8 / 3)
    progress.skip(8)  # a chunk a resumed run has records of
    assert progress.bar.n == pytest.approx(24)
    progress.close()
