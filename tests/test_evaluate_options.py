"""evaluate.py's options (one deep-merged config system) and the faults a run folder meets:
a second writer, SIGTERM, files a killed run left, a full disk, damaged data."""

import errno
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
import yaml

import evaluate
from datamodules import CIFAR10DataModule
from dipdefense.common.checkpoint_io import save_checkpoint
from dipdefense.common.data_paths import extract_archive
from dipdefense.common.errors import CheckpointError, DataNotFoundError, UserError
from dipdefense.evaluation.run_folder import OutputLock
from dipdefense.evaluation.sample_log import read_records
from dipdefense.nets import build_classifier, load_classifier
from lightning_modules import evaluate_cli
from tests.conftest import REPO, TINY_VICTIM_CONFIG


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "options.yaml"
    path.write_text(text)
    return str(path)


def test_a_partial_config_keeps_every_other_default(tmp_path):
    options = evaluate.load_options(["--config", _config(tmp_path, "attack_params: {cw: {kappa: 5.0}}\n")])
    assert options["attack_params"] == {"pgd": {"steps": 50}, "cw": {"kappa": 5.0}}  # pgd kept its 50 steps
    assert {k: options[k] for k in ("seed", "batch_size", "attacks")} == {
        "seed": 0,
        "batch_size": 100,
        "attacks": "clean,pgd",
    }
    assert options["data"]["class_path"] == "CIFAR10DataModule"


def test_nested_overrides_and_both_flag_styles(tmp_path):
    config = _config(tmp_path, "defense_params: {dip_stitch: {tau: 0.5}}\n")
    options = evaluate.load_options(
        ["--config", config, "--defense_params.dip_stitch.t0", "100", "--attack_params.pgd.steps=10",
         "--data.data_dir", "/somewhere", "--num_samples", "7", "--batch-size", "3"]
    )  # fmt: skip
    assert options["defense_params"] == {"dip_stitch": {"tau": 0.5, "t0": 100}}
    assert options["attack_params"] == {"pgd": {"steps": 10}}
    assert options["data"]["init_args"] == {"data_dir": "/somewhere"}
    assert (options["num_samples"], options["batch_size"]) == (7, 3)


def test_inline_defense_parameters_go_to_their_part():
    options = evaluate.load_options(["--defense", "glow_gate+dip_stitch(t0=100,tau=0.25)"])
    assert options["defense"] == "glow_gate+dip_stitch"
    assert options["defense_params"] == {"dip_stitch": {"t0": 100, "tau": 0.25}}


def test_print_config_prints_a_config_that_loads_back_to_the_same_options(tmp_path, capsys):
    argv = ["--defense", "dip_stitch(t0=100)", "--attack_params.pgd.steps", "20", "--eps", "2,4"]
    assert evaluate.main([*argv, "--print_config"]) == []
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["defense_params"] == {"dip_stitch": {"t0": 100}}
    reloaded = evaluate.load_options(["--config", _config(tmp_path, printed)])
    expected = evaluate.load_options(argv)
    assert reloaded == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["CONFIG:seed: abc\n"], r"option seed: 'abc' is not accepted; it must be an integer >= 0"),
        (["CONFIG:defense_params: 5\n"], r"option defense_params: 5 is not accepted; it must be a mapping"),
        (["CONFIG:attack_params: {pgd: 10}\n"], r"option attack_params: .* must be a mapping"),
        (["CONFIG:- a list\n"], r"must hold a mapping of options"),
        (["CONFIG:download: maybe\n"], r"option download: 'maybe' is not accepted; it must be true or false"),
        (["--num_samples", "-3"], r"option num_samples: -3 is not accepted"),
        (["--foo.bar", "1"], r"unrecognised argument '--foo.bar'.*data, defense_params, attack_params"),
        (["--defense_params.dip_stitch.t0"], r"--defense_params.dip_stitch.t0 needs a value"),
        (["--defense", "dip_stitch(t0)"], r"--defense: 'dip_stitch\(t0\)': 't0' is not key=value"),
    ],
)
def test_options_of_the_wrong_type_get_one_clear_error(argv, message, tmp_path):
    if argv[0].startswith("CONFIG:"):
        argv = ["--config", _config(tmp_path, argv[0].removeprefix("CONFIG:"))]
    with pytest.raises(UserError, match=message):
        evaluate.load_options(argv)


def _args(tiny_victim, data_dir, out, *extra):
    return ["--victim", str(tiny_victim), "--data-dir", str(data_dir), "--out", str(out), "--batch-size", "4", *extra]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--accelerator", "bogus"], "--accelerator bogus .*invalid accelerator name"),
        (["--attacks", "clean,pgd(steps=-5)"], r"pgd: steps=-5 is not accepted; steps must be an integer >= 1"),
        (["--num-samples", "31"], r"--num_samples 31: the test set has 30 images; 0 takes them all"),
        (["--victim", "NAN"], r"NaN or infinite weights"),
    ],
)
def test_bad_input_found_before_anything_is_written(extra, message, tiny_victim, cifar_batches_dir, tmp_path):
    if "NAN" in extra:
        state = build_classifier(**TINY_VICTIM_CONFIG).state_dict()
        next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
        save_checkpoint(tmp_path / "nan.ckpt", "victim", TINY_VICTIM_CONFIG, state)
        extra = ["--victim", str(tmp_path / "nan.ckpt")]
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message):
        evaluate.main([*_args(tiny_victim, cifar_batches_dir, out), *extra])
    assert not out.exists()


def test_nan_weights_are_refused_by_every_loader(tmp_path):
    state = build_classifier(**TINY_VICTIM_CONFIG).state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key][0] = float("inf")
    save_checkpoint(tmp_path / "inf.ckpt", "victim", TINY_VICTIM_CONFIG, state)
    with pytest.raises(CheckpointError, match=f"NaN or infinite weights \\({key}\\)"):
        load_classifier(tmp_path / "inf.ckpt")


def test_a_second_evaluation_on_the_same_out_is_refused(tiny_victim, cifar_batches_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    with OutputLock(out), pytest.raises(UserError, match=r"--out .*busy is in use by another evaluation \(pid \d+\)"):
        evaluate.main(_args(tiny_victim, cifar_batches_dir, out, "--attacks", "clean", "--num-samples", "4"))
    assert not (out / "run.json").exists() and not (out / "samples.jsonl").exists()
    # the lock died with its holder: the same command now runs
    rows = evaluate.main(_args(tiny_victim, cifar_batches_dir, out, "--attacks", "clean", "--num-samples", "4"))
    assert rows[0]["n"] == 4


def test_the_report_counts_only_the_runs_own_sample(tiny_victim, cifar_batches_dir, tmp_path):
    out = tmp_path / "run"
    args = _args(tiny_victim, cifar_batches_dir, out, "--attacks", "clean", "--num-samples", "6")
    evaluate.main(args)
    with open(out / "samples.jsonl", "a") as log:  # a stray record of an image outside the sample
        log.write(json.dumps({"index": 10_000, "attack": "clean", "label": 0, "pred": 0}) + "\n")
    rows = evaluate.main(args)
    assert rows[0]["n"] == 6


def test_temporary_files_a_killed_run_left_are_removed_and_files_get_the_umask_mode(
    tiny_victim, cifar_batches_dir, tmp_path
):
    out = tmp_path / "run"
    args = _args(tiny_victim, cifar_batches_dir, out, "--attacks", "clean", "--num-samples", "4")
    evaluate.main(args)
    stale = [out / ".results.json.abc123.tmp", out / "examples" / ".clean.pt.x1.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    evaluate.main(args)
    assert not any(path.exists() for path in stale)
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "results.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (out / "samples.jsonl").stat().st_mode & 0o777 == (out / "results.json").stat().st_mode & 0o777


def test_a_full_disk_is_one_clear_error(tiny_victim, cifar_batches_dir, tmp_path, monkeypatch):
    def no_space(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(evaluate_cli, "atomic_write_text", no_space)
    with pytest.raises(UserError, match=r"cannot write the run's files in .*No space left on device"):
        evaluate.main(
            _args(tiny_victim, cifar_batches_dir, tmp_path / "full", "--attacks", "clean", "--num-samples", "4")
        )


def test_sigterm_stops_the_run_promptly_and_keeps_finished_records(tiny_victim, cifar_batches_dir, tmp_path):
    """What ``timeout``, SLURM preemption and scancel send: the run stops at once (exit 143)
    with every finished chunk's records kept, and the same command resumes."""
    config = _config(
        tmp_path,
        "defense: dip_stitch\n"
        "defense_params: {dip_stitch: {network: small, iterations: 400, observe_every: 4, t0: 0, tau: 0.0}}\n",
    )
    out = tmp_path / "term"
    cmd = [sys.executable, str(REPO / "evaluate.py"), "--config", config,
           *_args(tiny_victim, cifar_batches_dir, out, "--attacks", "clean", "--num-samples", "12", "--batch-size", "1")]  # fmt: skip
    process = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not read_records(out / "samples.jsonl") and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()[1][-2000:]
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert time.monotonic() - sent < 30  # not the rest of the run (12 DIP fits)
    assert "stopped by SIGTERM" in stderr
    kept = read_records(out / "samples.jsonl")
    assert 1 <= len(kept) < 12 and not (out / "results.json").exists()


def test_download_reaches_the_data_sets_fetch_with_the_data_dir(tiny_victim, cifar_batches_dir, tmp_path, monkeypatch):
    """No network here: the call that would download is replaced by one that lays the files down."""
    import torchvision

    calls = []

    def fake_cifar10(root, train=True, download=False, **kwargs):
        calls.append((Path(root), download))
        shutil.copytree(cifar_batches_dir / "cifar-10-batches-py", Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    empty = tmp_path / "empty"
    args = ["--victim", str(tiny_victim), "--data-dir", str(empty), "--out", str(tmp_path / "o"), "--attacks", "clean"]
    with pytest.raises(DataNotFoundError, match="CIFAR-10 not found"):
        evaluate.main([*args, "--num-samples", "3"])
    rows = evaluate.main([*args, "--num-samples", "3", "--download"])
    assert calls == [(empty, True)] and rows[0]["n"] == 3


def test_download_of_a_data_set_that_cannot_be_downloaded_is_one_clear_error(tiny_victim, tmp_path):
    args = ["--victim", str(tiny_victim), "--out", str(tmp_path / "o"), "--attacks", "clean", "--download"]
    args += ["--data.class_path", "datamodules.ImageNetValDataModule"]
    with pytest.raises(UserError, match=r"ImageNetValDataModule cannot download.*that download: CIFAR10DataModule"):
        evaluate.main(args)
    assert not (tmp_path / "o").exists()


def test_a_damaged_decoded_image_cache_is_rebuilt_with_a_warning(cifar_folder_dir):
    first = CIFAR10DataModule(data_dir=str(cifar_folder_dir)).load_split(train=False)
    cached = list((Path(os.environ["DIPDEF_CACHE"]) / "tensors").glob("test-*.pt"))
    assert len(cached) == 1
    cached[0].write_bytes(cached[0].read_bytes()[:100])  # truncated by a full disk or a kill
    with pytest.warns(UserWarning, match=f"{cached[0].name} is damaged"):
        again = CIFAR10DataModule(data_dir=str(cifar_folder_dir)).load_split(train=False)
    assert torch.equal(first.images, again.images)
    torch.load(cached[0], weights_only=True)  # rewritten whole


def test_a_truncated_archive_is_one_clear_error_and_abandoned_extractions_are_removed(cifar_folder_archive, tmp_path):
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(cifar_folder_archive.read_bytes()[:3000])
    with pytest.raises(DataNotFoundError, match="cut.tar.gz is a damaged archive"):
        extract_archive(truncated)
    extracted = Path(os.environ["DIPDEF_CACHE"]) / "extracted"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = extracted / f".partial-{dead.pid}-abc"
    abandoned.mkdir()
    mine = extracted / f".partial-{os.getpid()}-live"  # a live process's extraction is left alone
    mine.mkdir()
    target = extract_archive(cifar_folder_archive)
    assert (target / "test").is_dir() and not abandoned.exists() and mine.exists()
    assert not any(p.name.startswith(".partial") for p in extracted.iterdir() if p != mine)
    with tarfile.open(cifar_folder_archive) as tar:
        assert len([m for m in tar.getmembers() if m.isfile()]) == len(list(target.rglob("*.jpg")))


def test_a_resume_with_another_chunk_size_or_other_images_is_refused(tiny_victim, cifar_batches_dir, tmp_path):
    """An attack's random start is drawn per chunk: a resume with another --batch_size would mix
    perturbations drawn differently (15 of 20 differed in one try); other data, other images."""
    out = tmp_path / "run"
    args = _args(tiny_victim, cifar_batches_dir, out, "--attacks", "clean", "--num-samples", "8")
    evaluate.main(args)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["batch_size"] == 4 and len(manifest["sample_sha256"]) == 64
    with pytest.raises(UserError, match=r"holds another run's records \(batch_size differ\)"):
        evaluate.main([*args, "--batch_size", "2"])
    other = tmp_path / "other_data"
    shutil.copytree(cifar_batches_dir, other)
    test_batch = other / "cifar-10-batches-py" / "test_batch"
    with open(test_batch, "rb") as f:
        entry = pickle.load(f)
    entry["data"] = 255 - entry["data"]  # the same labels, other pixels
    with open(test_batch, "wb") as f:
        pickle.dump(entry, f)
    with pytest.raises(UserError, match=r"\(sample_sha256 differ\)"):
        evaluate.main([*_args(tiny_victim, other, out), "--attacks", "clean", "--num-samples", "8"])


def test_a_run_grows_to_more_images_as_a_fresh_run_would_and_only_on_a_chunk_boundary(
    tiny_victim, cifar_batches_dir, tmp_path
):
    """32 images now, 100 next session: the old images keep their records (a poisoned record
    proves none is redone), the new ones get what a fresh run of that size gives them."""
    from dipdefense.evaluation.sample_log import read_run_records

    grown, fresh = tmp_path / "grown", tmp_path / "fresh"
    attacks = ("--attacks", "clean,pgd(steps=2)")
    evaluate.main(_args(tiny_victim, cifar_batches_dir, grown, *attacks, "--num-samples", "8"))
    log = grown / "samples.jsonl"
    first = [json.loads(line) for line in log.read_text().splitlines()]
    marked = [{**r, "note": "kept"} for r in first]
    log.write_text("".join(json.dumps(r) + "\n" for r in marked))
    rows = evaluate.main(_args(tiny_victim, cifar_batches_dir, grown, *attacks, "--num-samples", "12"))
    assert rows[0]["n"] == 12 and json.loads((grown / "run.json").read_text())["num_samples"] == 12
    evaluate.main(_args(tiny_victim, cifar_batches_dir, fresh, *attacks, "--num-samples", "12"))

    def by_key(out):
        return {(r["index"], r["attack"]): r for r in read_run_records(out)}

    grown_records, fresh_records = by_key(grown), by_key(fresh)
    assert grown_records.keys() == fresh_records.keys() and len(grown_records) == 24
    assert sum(r.get("note") == "kept" for r in grown_records.values()) == 16
    for key, record in fresh_records.items():
        assert grown_records[key]["pred"] == record["pred"], key
    with pytest.raises(UserError, match=r"\(num_samples, sample_sha256 differ\)"):  # no shrinking
        evaluate.main(_args(tiny_victim, cifar_batches_dir, grown, *attacks, "--num-samples", "8"))
    odd = tmp_path / "odd"
    evaluate.main(_args(tiny_victim, cifar_batches_dir, odd, *attacks, "--num-samples", "6"))
    with pytest.raises(UserError, match=r"this run's 6 images end mid-chunk .* a multiple of 4 images"):
        evaluate.main(_args(tiny_victim, cifar_batches_dir, odd, *attacks, "--num-samples", "12"))
    other_seed = (*attacks, "--num-samples", "12", "--seed", "1")
    with pytest.raises(UserError, match=r"holds another run's records"):
        evaluate.main(_args(tiny_victim, cifar_batches_dir, fresh, *other_seed))


def test_a_run_json_from_before_the_sample_hash_grows_only_from_its_own_images(
    tiny_victim, cifar_batches_dir, tmp_path
):
    """Runs begun before run.json hashed the sample (the archived 32-image adaptive runs) grow to
    100 when their records' images are the new draw's first ones; another draw's are refused."""
    out = tmp_path / "old"
    attacks = ("--attacks", "clean")
    evaluate.main(_args(tiny_victim, cifar_batches_dir, out, *attacks, "--num-samples", "8"))
    manifest = json.loads((out / "run.json").read_text())
    del manifest["sample_sha256"]
    (out / "run.json").write_text(json.dumps(manifest))
    other = tmp_path / "other_seed"
    shutil.copytree(out, other)
    log = other / "samples.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({**r, "index": r["index"] + 1}) + "\n" for r in records))
    rows = evaluate.main(_args(tiny_victim, cifar_batches_dir, out, *attacks, "--num-samples", "12"))
    assert rows[0]["n"] == 12 and len(json.loads((out / "run.json").read_text())["sample_sha256"]) == 64
    with pytest.raises(UserError, match=r"holds another run's records \(num_samples differ\)"):
        evaluate.main(_args(tiny_victim, cifar_batches_dir, other, *attacks, "--num-samples", "12"))


def test_bpda_pgd_params_added_later_resume_only_at_the_value_older_runs_ran_under(tmp_path):
    """A run.json from before bpda_pgd recorded ``step`` and ``on_range`` ran sign steps from
    the iterate: it resumes under those values, and not under L2 steps."""
    from dipdefense.evaluation.run_folder import check_out_dir

    def manifest(**params):
        return {
            "defense": "dip_stitch",
            "attacks": [{"id": "bpda_pgd@8/255", "params": {"name": "bpda_pgd", **params}}],
        }

    (tmp_path / "run.json").write_text(json.dumps(manifest(steps=15)))
    assert check_out_dir(tmp_path, manifest(steps=15, step="sign", on_range=False)) is None
    with pytest.raises(UserError, match=r"\(attacks differ\)"):
        check_out_dir(tmp_path, manifest(steps=15, step="l2", on_range=False))
    with pytest.raises(UserError, match=r"\(attacks differ\)"):
        check_out_dir(tmp_path, manifest(steps=15, step="sign", on_range=True))


def test_a_run_json_from_before_the_chunk_size_was_recorded_still_resumes(tiny_victim, cifar_batches_dir, tmp_path):
    out = tmp_path / "old"
    args = _args(tiny_victim, cifar_batches_dir, out, "--attacks", "clean", "--num-samples", "8")
    evaluate.main(args)
    manifest = json.loads((out / "run.json").read_text())
    del manifest["batch_size"], manifest["sample_sha256"]
    manifest["command"] = "python evaluate.py --defense none --batch-size 4"
    (out / "run.json").write_text(json.dumps(manifest))
    assert evaluate.main(args)[0]["n"] == 8  # its command says 4, as now
    (out / "run.json").write_text(json.dumps({**manifest, "command": "python evaluate.py --batch_size=2"}))
    with pytest.raises(UserError, match=r"\(batch_size differ\)"):
        evaluate.main(args)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"t0": "abc"}, r"defense dip_stitch: t0='abc' is not accepted; t0 must be an integer >= 0"),
        ({"iterations": 0}, r"iterations must be an integer >= 1"),
        ({"tau": -0.5}, r"tau must be a number >= 0"),
        ({"search": 3}, r"search must be a string"),
    ],
)
def test_defense_parameters_of_the_wrong_type_or_sign_are_refused(params, message):
    from dipdefense.defenses import build_defense

    with pytest.raises(UserError, match=message):
        build_defense("dip_stitch", **params)
    assert build_defense("dip_stitch", t0=0, seed=0).params()["t0"] == 0  # 0 is a meaningful t0


def test_report_only_writes_interim_results_over_the_images_every_attack_finished(
    tiny_victim, cifar_batches_dir, tmp_path
):
    out = tmp_path / "run"
    args = _args(tiny_victim, cifar_batches_dir, out, "--attacks", "clean,fgsm", "--num-samples", "8")
    with pytest.raises(UserError, match=r"--report_only: .*run holds no run yet"):
        evaluate.main([*args, "--report-only"])
    assert not out.exists()
    evaluate.main(args)
    records = read_records(out / "samples.jsonl")
    first = list(dict.fromkeys(r["index"] for r in records))[:4]
    straggler = next(r for r in records if r["index"] not in first and r["attack"] == "clean")
    kept = [r for r in records if r["index"] in first] + [straggler]  # a killed run: one image half done
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (out / "results.json").unlink()
    rows = evaluate.main([*args, "--report-only"])
    result = json.loads((out / "results.json").read_text())
    assert result["num_samples"] == 8 and result["complete_images"] == 4
    assert [r["n"] for r in rows] == [4, 4]
    right = sum(r["pred"] == r["label"] for r in kept if r["attack"] == "clean" and r["index"] in first)
    assert rows[0]["accuracy"] == pytest.approx(right / 4)
    assert len(read_records(out / "samples.jsonl")) == 9  # nothing attacked, nothing dropped


def test_the_batch_size_does_not_change_an_images_attack(tiny_victim, cifar_batches_dir, tmp_path):
    """Random starts are drawn per image (``common.per_image_rng``): chunks of 4 and of 2 give
    every image the same PGD perturbation, so the same record (timings aside)."""
    attacks = ("--attacks", "pgd(steps=3)", "--num-samples", "8")
    records = {}
    for size in ("4", "2"):
        out = tmp_path / f"chunks_of_{size}"
        evaluate.main([*_args(tiny_victim, cifar_batches_dir, out, *attacks), "--batch_size", size])
        assert json.loads((out / "run.json").read_text())["attack_rng"] == "per-image"
        records[size] = sorted(
            ({k: r[k] for k in ("index", "adv_pred", "l2", "linf")} for r in read_records(out / "samples.jsonl")),
            key=lambda r: r["index"],
        )
    assert records["4"] == records["2"] and len(records["4"]) == 8


def test_a_run_begun_before_per_image_draws_resumes_with_per_chunk_draws(tiny_victim, cifar_batches_dir, tmp_path):
    out = tmp_path / "old"
    args = _args(tiny_victim, cifar_batches_dir, out, "--attacks", "clean,pgd(steps=2)", "--num-samples", "8")
    evaluate.main(args)
    manifest = json.loads((out / "run.json").read_text())
    del manifest["attack_rng"]  # as run.json was written before it was recorded
    (out / "run.json").write_text(json.dumps(manifest))
    samples = out / "samples.jsonl"
    kept = [line for line in samples.read_text().splitlines() if '"attack": "clean"' in line]
    samples.write_text("\n".join(kept) + "\n")  # the pgd records still to do
    assert evaluate.main(args)[-1]["n"] == 8
    assert json.loads((out / "run.json").read_text())["attack_rng"] == "per-chunk"


def test_victim_options_change_the_victims_function_its_manifest_and_its_cache(cifar_batches_dir, tmp_path):
    """airbench94's test-time augmentation is an option of the exported model (issue 40): a run
    without it records the option, keys its adversarial cache apart and refuses to resume the other."""
    config = {"arch": "airbench94", "num_classes": 10, "in_channels": 3, "image_size": 32, "mean": "cifar10",
              "std": None, "arch_options": {"widths": [8, 16, 16], "tta_level": 2}}  # fmt: skip
    victim = tmp_path / "airbench.ckpt"
    torch.manual_seed(0)
    save_checkpoint(victim, "victim", config, build_classifier(**config).state_dict())
    out = tmp_path / "no_tta"
    args = _args(victim, cifar_batches_dir, out, "--attacks", "clean,fgsm", "--num-samples", "4")
    evaluate.main([*args, "--victim_options.tta_level", "0"])
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["victim_options"] == {"tta_level": 0}
    assert json.loads((out / "results.json").read_text())["victim_options"] == {"tta_level": 0}
    cache = Path(os.environ["DIPDEF_CACHE"]) / "adversarial"
    first = set(cache.rglob("*.pt"))
    evaluate.main(_args(victim, cifar_batches_dir, tmp_path / "tta", "--attacks", "clean,fgsm", "--num-samples", "4"))
    assert len(set(cache.rglob("*.pt")) - first) == 1  # the augmented victim's FGSM images are its own
    with pytest.raises(UserError, match=r"holds another run's records \(victim_options differ\)"):
        evaluate.main(args)
    with pytest.raises(UserError, match=r"--victim_options \{'tta_level': 2\}: .*takes no option tta_level"):
        evaluate.main([*_args(REPO / "checkpoints" / "victim_cifar_resnet20.ckpt", cifar_batches_dir, tmp_path / "r"),
                       "--victim_options.tta_level", "2"])  # fmt: skip


def test_the_run_starts_with_its_plan_and_lightnings_chatter_only_with_verbose(
    tiny_victim, cifar_batches_dir, tmp_path, capfd
):
    evaluate.main(
        _args(tiny_victim, cifar_batches_dir, tmp_path / "quiet", "--attacks", "clean,fgsm", "--num-samples", "4")
    )
    err = capfd.readouterr().err
    assert "plan: defense none on 4 images; clean, fgsm@8/255 (oblivious); results in " in err
    assert "victim tiny_victim.ckpt: " in err and "right on the first 4 images, undefended" in err
    assert "GPU available" not in err and "litlogger" not in err
    chatter = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert chatter.level == logging.WARNING
    evaluate.main([*_args(tiny_victim, cifar_batches_dir, tmp_path / "loud", "--attacks", "clean"), "--verbose"])
    assert chatter.level == logging.INFO  # Lightning's own stderr handler then prints it
