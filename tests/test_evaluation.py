import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

import evaluate
from dipdefense.common.checkpoint_io import save_checkpoint
from dipdefense.common.errors import UserError
from dipdefense.common.ssim import per_image_ssim
from dipdefense.defenses import DEFENSES, Detector, Purified, Purifier, build_defense, register_defense
from dipdefense.evaluation.adversarial_cache import AdversarialCache
from dipdefense.evaluation.attack_specs import expand_attacks, parse_eps
from dipdefense.evaluation.chunks import ChunkDataset, sample_indices
from dipdefense.evaluation.sample_log import SampleLog, read_records, unique_records
from dipdefense.nets import build_classifier
from tests.conftest import REPO, TINY_VICTIM_CONFIG


def _run(out, victim, data_dir, *extra):
    args = ["--victim", str(victim), "--data-dir", str(data_dir), "--out", str(out), "--batch-size", "8", *extra]
    return evaluate.main(args)


def _comparable(rows):
    """Rows without timings, means rounded: ranks append records in another order than one
    process does, and a float mean depends on the order of its terms in the last bits."""
    return [
        {k: round(v, 9) if isinstance(v, float) else v for k, v in r.items() if k not in ("seconds", "images_per_s")}
        for r in rows
    ]


def test_ssim_matches_skimage():
    torch.manual_seed(0)
    clean = torch.rand(3, 3, 32, 32)
    noisy = (clean + 0.1 * torch.randn_like(clean)).clamp(0, 1)
    ours = per_image_ssim(noisy, clean)
    for i in range(3):
        reference = structural_similarity(
            noisy[i].numpy(), clean[i].numpy(), data_range=1.0, channel_axis=0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )  # fmt: skip
        assert abs(float(ours[i]) - reference) < 2e-3
    assert torch.allclose(per_image_ssim(clean, clean), torch.ones(3))


def test_wilson_interval_known_values():
    from dipdefense.evaluation.metrics import wilson_interval

    low, high = wilson_interval(8, 10)
    assert abs(low - 0.4902) < 1e-4 and abs(high - 0.9433) < 1e-4
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_eps_parsing_and_attack_expansion():
    assert parse_eps("2,4,8") == pytest.approx([2 / 255, 4 / 255, 8 / 255])
    assert parse_eps("0.02") == pytest.approx([0.02])
    for bad in ("", "abc", "300", "-1"):
        with pytest.raises(UserError):
            parse_eps(bad)
    runs = expand_attacks("clean,pgd,cw", parse_eps("2,8"), {"cw": {"steps": 10}})
    assert [r.id for r in runs] == ["clean", "pgd@2/255", "pgd@8/255", "cw"]
    assert runs[3].build().params()["steps"] == 10
    runs = expand_attacks("hopskipjump(queries=200), hopskipjump(queries=1000, gamma=2.0), pgd(steps=3)", [8 / 255])
    assert [r.id for r in runs] == [
        "hopskipjump(queries=200)",
        "hopskipjump(queries=1000,gamma=2.0)",
        "pgd(steps=3)@8/255",
    ]
    assert runs[1].params == {"queries": 1000, "gamma": 2.0} and runs[2].build().params()["steps"] == 3
    with pytest.raises(UserError, match="pgd.*unknown parameter"):
        expand_attacks("pgd(stepz=3)", [0.03])
    with pytest.raises(UserError, match="unbalanced"):
        expand_attacks("pgd(steps=3", [0.03])
    with pytest.raises(UserError, match="unknown attack 'pgdd'; accepted: clean, .*pgd"):
        expand_attacks("pgdd", [0.03])


def test_sample_indices_are_seeded_and_chunks_fixed():
    a = sample_indices(100, 10, seed=0)
    assert a == sample_indices(100, 10, seed=0) != sample_indices(100, 10, seed=1)
    assert len(set(a)) == 10 and sample_indices(5, None, 0) == [0, 1, 2, 3, 4]
    chunks = ChunkDataset([(torch.zeros(1, 2, 2), i % 3) for i in range(100)], a, chunk_size=4)
    assert [len(c) for c in chunks.chunks] == [4, 4, 2]
    images, labels, idx = chunks[2]
    assert images.shape == (2, 1, 2, 2) and idx.tolist() == a[8:]


def test_cache_hit_miss_and_atomicity(tmp_path, monkeypatch):
    cache = AdversarialCache(tmp_path)
    key = {"victim": "ab" * 32, "attack": "pgd", "indices": [1, 2], "seed": 0}
    calls = []

    def make():
        calls.append(1)
        return torch.ones(2, 3)

    assert torch.equal(cache.get_or_create(key, make), torch.ones(2, 3))
    assert torch.equal(cache.get_or_create(key, make), torch.ones(2, 3))
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert cache.load({**key, "indices": [1, 3]}) is None  # other images: a miss
    # A crash in the middle of writing leaves no entry behind.
    key2 = {**key, "seed": 1}

    def failing_save(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        cache.store(key2, torch.zeros(1))
    monkeypatch.undo()
    assert cache.load(key2) is None and not list(tmp_path.rglob("*.tmp"))
    # A garbled entry is recomputed, not trusted.
    cache.path_for(key).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        assert cache.load(key) is None


def test_sample_log_drops_a_partial_last_line(tmp_path):
    log = SampleLog(tmp_path / "samples.jsonl")
    log.append([{"index": 1, "attack": "clean"}, {"index": 2, "attack": "clean"}])
    with open(log.path, "ab") as f:
        f.write(b'{"index": 3, "att')
    assert len(read_records(log.path)) == 2 and log.path.read_bytes().endswith(b"att")
    assert len(read_records(log.path, repair=True)) == 2 and log.path.read_bytes().endswith(b"}\n")
    log.append([{"index": 3, "attack": "clean"}, {"index": 1, "attack": "clean"}])
    assert sorted(unique_records(read_records(log.path))) == [(1, "clean"), (2, "clean"), (3, "clean")]


def test_sample_log_skips_damaged_lines_and_keeps_the_ones_after(tmp_path):
    log = SampleLog(tmp_path / "samples.jsonl")
    log.append([{"index": 1, "attack": "clean"}])
    with open(log.path, "ab") as f:
        f.write(b'{"index": 2, "attack": "cl\xff\xfe"}\n')  # invalid UTF-8
        f.write(b"[1, 2, 3]\n")  # valid JSON, not a record
        f.write(b'{"index": 3, "att\n')  # garbled
    log.append([{"index": 4, "attack": "clean"}])
    with open(log.path, "ab") as f:
        f.write(b'\xff{"index": 5')  # a cut-off last line with bad bytes
    with pytest.warns(UserWarning, match="skipped 3 damaged line"):
        records = read_records(log.path, repair=True)
    assert [r["index"] for r in records] == [1, 4]
    assert log.path.read_bytes().endswith(b'"clean", "index": 4}\n')  # only the cut-off tail was removed


def test_evaluate_writes_results_and_resumes_identically(tiny_victim, cifar_batches_dir, tmp_path):
    args = ("--attacks", "clean,fgsm,pgd", "--eps", "2,8", "--num-samples", "20")
    rows = _run(tmp_path / "a", tiny_victim, cifar_batches_dir, *args)
    out = tmp_path / "a"
    for name in (
        "results.json",
        "results.csv",
        "results.md",
        "samples.jsonl",
        "run.json",
        "accuracy_vs_eps.png",
        "examples.png",
    ):
        assert (out / name).is_file(), name
    result = json.loads((out / "results.json").read_text())
    assert [(r["attack"], r["eps"]) for r in result["rows"]] == [
        ("clean", None), ("fgsm", pytest.approx(2 / 255)), ("fgsm", pytest.approx(8 / 255)),
        ("pgd", pytest.approx(2 / 255)), ("pgd", pytest.approx(8 / 255)),
    ]  # fmt: skip
    assert all(r["n"] == 20 for r in rows) and rows[1]["mean_linf"] <= 2 / 255 + 1e-6
    assert "Table 1" in (out / "results.md").read_text()

    # Simulated crash: keep 37 of 100 records, the 38th cut in half; then rerun.
    resumed = tmp_path / "b"
    _run(resumed, tiny_victim, cifar_batches_dir, *args)
    lines = (resumed / "samples.jsonl").read_bytes().splitlines(keepends=True)
    (resumed / "samples.jsonl").write_bytes(b"".join(lines[:37]) + lines[37][:25])
    rows_resumed = _run(resumed, tiny_victim, cifar_batches_dir, *args)
    assert _comparable(rows_resumed) == _comparable(rows)
    records = read_records(resumed / "samples.jsonl")
    assert len(records) == 100 == len(unique_records(records))


def test_a_killed_multi_rank_run_resumes_from_every_ranks_file_exactly_once(tiny_victim, cifar_batches_dir, tmp_path):
    """Each rank appends to a file of its own (one writer per file, safe on NFS); a run killed
    mid-way leaves samples.jsonl and samples.rank1.jsonl, each maybe with a partial last line."""
    args = ("--attacks", "clean,fgsm", "--eps", "8", "--num-samples", "12")
    whole = _run(tmp_path / "whole", tiny_victim, cifar_batches_dir, *args)
    lines = (tmp_path / "whole" / "samples.jsonl").read_bytes().splitlines(keepends=True)
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "run.json").write_bytes((tmp_path / "whole" / "run.json").read_bytes())
    (killed / "samples.jsonl").write_bytes(b"".join(lines[:7]) + lines[7][:30])
    (killed / "samples.rank1.jsonl").write_bytes(b"".join(lines[8:15]) + lines[15][:11])
    resumed = _run(killed, tiny_victim, cifar_batches_dir, *args)
    assert _comparable(resumed) == _comparable(whole)
    assert not (killed / "samples.rank1.jsonl").exists()
    records = read_records(killed / "samples.jsonl")
    assert len(records) == 24 == len(unique_records(records))


def test_out_dir_of_another_run_is_refused_and_untouched(tiny_victim, cifar_batches_dir, tmp_path):
    out = tmp_path / "run"
    _run(out, tiny_victim, cifar_batches_dir, "--attacks", "clean", "--num-samples", "8")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(UserError, match="holds another run's records \\(attacks differ\\)"):
        _run(out, tiny_victim, cifar_batches_dir, "--attacks", "clean,fgsm", "--num-samples", "8")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--defense", "dip_magic"], "unknown defense 'dip_magic'; accepted: .*none"),
        (["--attacks", "clean,pgdd"], "unknown attack 'pgdd'"),
        (["--eps", "400"], "out of range"),
        (["--victim", "VICTIM_GARBAGE"], "not a readable victim checkpoint"),
        (["--victim", "VICTIM_5_CLASSES"], "has 5 classes but the data set has 10"),
    ],
)
def test_bad_input_gives_one_error_and_writes_nothing(extra, message, tiny_victim, cifar_batches_dir, tmp_path):
    if "VICTIM_GARBAGE" in extra:
        (tmp_path / "garbage.ckpt").write_bytes(b"nope")
        extra = ["--victim", str(tmp_path / "garbage.ckpt")]
    if "VICTIM_5_CLASSES" in extra:
        config = {**TINY_VICTIM_CONFIG, "num_classes": 5}
        save_checkpoint(tmp_path / "five.ckpt", "victim", config, build_classifier(**config).state_dict())
        extra = ["--victim", str(tmp_path / "five.ckpt")]
    out = tmp_path / "out"
    args = ["--victim", str(tiny_victim), "--data-dir", str(cifar_batches_dir), "--out", str(out), *extra]
    with pytest.raises(UserError, match=message):
        evaluate.main(args)
    assert not out.exists()


def test_ddp_on_two_cpu_processes_runs_dip_on_disjoint_shards_like_one_process(
    tiny_victim, cifar_batches_dir, tmp_path
):
    config = tmp_path / "dipdefense.dip.yaml"
    config.write_text(
        "defense: dip_stitch\n"
        "defense_params: {dip_stitch: {network: small, iterations: 20, observe_every: 2, t0: 0, tau: 0.0, dip_batch: 2}}\n"
    )
    common = [
        "--config", str(config), "--victim", str(tiny_victim), "--data-dir", str(cifar_batches_dir),
        "--attacks", "clean,fgsm", "--eps", "4", "--num-samples", "7", "--batch-size", "2", "--accelerator", "cpu",
    ]  # fmt: skip
    out = tmp_path / "ddp"
    cmd = [sys.executable, str(REPO / "evaluate.py"), *common, "--out", str(out), "--devices", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = read_records(out / "samples.jsonl")
    assert len(records) == 14 == len(unique_records(records))
    assert not list(out.glob("samples.rank*.jsonl"))  # rank 1's own file was folded into samples.jsonl
    assert sorted({r["index"] for r in records}) == sorted(sample_indices(30, 7, 0))
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["n"] for r in rows] == [7, 7]
    # Lightning gives each of the two CPU ranks one thread; a DIP fit is chaotic and on some CPUs
    # (this Xeon) the native kernels' reductions depend on the thread count, so match it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate.main([*common, "--out", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(threads)
    differing = [
        (a["attack"], k, a.get(k), b.get(k))
        for a, b in zip(_comparable(single), _comparable(rows), strict=True)
        for k in set(a) | set(b)
        if a.get(k) != b.get(k)
    ]
    assert not differing, differing
    per_image = {key: (r["pred"], r["crossings"], round(r["ssim"], 6)) for key, r in unique_records(records).items()}
    one = unique_records(read_records(tmp_path / "one" / "samples.jsonl"))
    assert per_image == {key: (r["pred"], r["crossings"], round(r["ssim"], 6)) for key, r in one.items()}
    assert np.isfinite([r["ssim"] for r in rows]).all()


def test_dip_defense_runs_in_the_harness_and_saves_decision_traces(tiny_victim, cifar_batches_dir, tmp_path):
    config = tmp_path / "dipdefense.dip.yaml"
    config.write_text(
        "defense: dip_stitch\n"
        "defense_params: {dip_stitch: {network: small, iterations: 40, observe_every: 2, t0: 0, tau: 0.0, dip_batch: 3}}\n"
    )
    out = tmp_path / "dip"
    rows = _run(out, tiny_victim, cifar_batches_dir, "--config", str(config), "--attacks", "clean,fgsm", "--eps", "8",
                "--num-samples", "5", "--save-traces", "2")  # fmt: skip
    assert [r["n"] for r in rows] == [5, 5]
    records = read_records(out / "samples.jsonl")
    assert all("crossings" in r for r in records)
    first_two = sample_indices(30, 5, 0)[:2]
    for run_id in ("clean", "fgsm@8_255"):
        assert sorted(p.stem for p in (out / "traces" / run_id).glob("*.png")) == sorted(map(str, first_two))
    with pytest.raises(UserError, match="--save-traces needs a DIP defense"):
        _run(tmp_path / "none", tiny_victim, cifar_batches_dir, "--save-traces", "1")
    # Paper 001's 5-scale network cannot take 32x32 images: refused before anything is written.
    with pytest.raises(UserError, match="deep_protection: the DIP network has 5 scales.*deep_protection_cifar"):
        _run(tmp_path / "deep", tiny_victim, cifar_batches_dir, "--defense", "glow_gate+deep_protection")
    assert not (tmp_path / "deep").exists()


def test_deep_protection_static_error_split_is_reported_like_paper_001(tiny_victim, cifar_batches_dir, tmp_path):
    out = tmp_path / "dp"
    defense = "deep_protection(network=deep_protection_small,iterations=20,check_every=10,error_split=true)"
    rows = _run(out, tiny_victim, cifar_batches_dir, "--defense", defense, "--attacks", "clean,fgsm", "--eps", "8",
                "--num-samples", "4")  # fmt: skip
    records = read_records(out / "samples.jsonl")
    for row in rows:
        mine = [r for r in records if r["attack_name"] == row["attack"]]
        wrong = [r for r in mine if r["pred"] != r["label"]]
        assert row["overfit_share"] + row["underfit_share"] == pytest.approx(len(wrong) / len(mine))
        assert row["median_iterations"] == 20
    assert "## Errors: overfit / underfit (paper 001 Sec. 4.2, Fig. 5)" in (out / "results.md").read_text()


def test_detection_rows_on_a_known_case():
    from dipdefense.evaluation.attack_specs import AttackRun
    from dipdefense.evaluation.rows import detection_rows

    def rec(index, attack, score):
        return {"index": index, "attack": attack, "score": score, "flagged": score >= 0.5}

    records = [rec(i, "clean", s) for i, s in enumerate([0.1, 0.2, 0.6])]
    records += [rec(i, "pgd@8/255", s) for i, s in enumerate([0.7, 0.4, 0.9])]
    runs = expand_attacks("clean,pgd", [8 / 255])
    assert [r.id for r in runs] == ["clean", "pgd@8/255"] and isinstance(runs[0], AttackRun)
    (row,) = detection_rows(records, runs)
    assert row["n_pairs"] == 3 and abs(row["roc_auc"] - 8 / 9) < 1e-6
    assert abs(row["tpr"] - 2 / 3) < 1e-6 and abs(row["fpr"] - 1 / 3) < 1e-6
    assert abs(row["detection_accuracy"] - 4 / 6) < 1e-6
    assert detection_rows([r for r in records if r["attack"] != "clean"], runs) == []


class _BrightnessGate(Detector):
    """Flags images brighter than 0.5 on average (score = mean intensity)."""

    name = "test_brightness_gate"

    def score(self, images):
        return images.mean(dim=(1, 2, 3))


class _Blackout(Purifier):
    name = "test_blackout"

    def purify_detailed(self, images, classifier, indices, labels=None):
        return Purified(torch.zeros_like(images), [{"purified_index": int(i)} for i in indices], {})


for _cls in (_BrightnessGate, _Blackout):
    if _cls.name not in DEFENSES:
        register_defense(_cls.name, _cls)


def test_detector_gated_purifier_purifies_only_flagged_images():
    gated = build_defense("test_brightness_gate+test_blackout")
    images = torch.cat([torch.full((2, 3, 4, 4), 0.9), torch.full((2, 3, 4, 4), 0.1)])[[0, 2, 1, 3]]
    out, details, _ = gated.purify_detailed(images, torch.nn.Identity(), torch.tensor([10, 11, 12, 13]))
    assert torch.equal(out[[0, 2]], torch.zeros(2, 3, 4, 4)) and torch.equal(out[[1, 3]], images[[1, 3]])
    assert [d["flagged"] for d in details] == [True, False, True, False]
    assert details[2]["purified_index"] == 12 and "purified_index" not in details[1]
    assert torch.equal(gated.purify(images, torch.nn.Identity(), torch.tensor([10, 11, 12, 13])), out)
    with pytest.raises(UserError, match="'none' is not a detector"):
        build_defense("none+test_blackout")
    with pytest.raises(UserError, match="DETECTOR\\+PURIFIER"):
        build_defense("a+b+c")
    with pytest.raises(UserError, match="keyed by"):
        build_defense("test_brightness_gate+test_blackout", tau=1)


def test_gated_run_reports_detection_and_the_flagged_share(tiny_victim, cifar_batches_dir, tmp_path):
    rows = _run(
        tmp_path / "g", tiny_victim, cifar_batches_dir,
        "--defense", "test_brightness_gate+none", "--attacks", "clean,fgsm", "--eps", "8", "--num-samples", "16",
    )  # fmt: skip
    result = json.loads((tmp_path / "g" / "results.json").read_text())
    assert all(r["flagged_share"] is not None for r in rows)
    (detection,) = result["detection"]
    assert detection["attack"] == "fgsm" and detection["n_pairs"] == 16 and 0 <= detection["roc_auc"] <= 1
    assert "Detection" in (tmp_path / "g" / "results.md").read_text()
