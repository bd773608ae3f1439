"""studies/adaptive_eval.py: runs archived in git resume in a fresh checkout, and the figures
are drawn from the archive, so they keep every run measured in earlier sessions."""

import gzip
import json
import sys
from pathlib import Path

import pytest

from dipdefense.evaluation.sample_log import read_records

STUDIES = Path(__file__).resolve().parents[1] / "studies"
sys.path.insert(0, str(STUDIES))

import adaptive_eval  # noqa: E402


def _write_run(run_dir: Path, records: int, partial_tail: bool = False) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"defense": "none", "seed": 0}))
    lines = "".join(json.dumps({"index": i, "attack": "clean"}) + "\n" for i in range(records))
    (run_dir / "samples.jsonl").write_text(lines + ('{"index": 99, "att' if partial_tail else ""))


def test_archive_keeps_complete_records_and_never_shrinks(tmp_path):
    run_dir, archive = tmp_path / "runs" / "r", tmp_path / "archive" / "r"
    _write_run(run_dir, 5, partial_tail=True)  # a run killed mid-write
    assert adaptive_eval.archive_run(run_dir, archive)
    assert [r["index"] for r in adaptive_eval.archived_records(archive)] == [0, 1, 2, 3, 4]
    assert not (archive / "results.json").exists()  # no results yet: none archived
    before = (archive / "samples.jsonl.gz").read_bytes()
    assert adaptive_eval.archive_run(run_dir, archive)
    assert (archive / "samples.jsonl.gz").read_bytes() == before  # byte-stable: git sees no change
    # a fresh checkout's emptier copy of the run does not overwrite the archived work
    _write_run(run_dir, 2)
    assert not adaptive_eval.archive_run(run_dir, archive)
    assert len(adaptive_eval.archived_records(archive)) == 5
    assert not adaptive_eval.archive_run(tmp_path / "missing", archive)


def test_restore_lays_an_archived_run_only_where_the_run_has_no_records(tmp_path):
    run_dir, archive = tmp_path / "runs" / "r", tmp_path / "archive" / "r"
    _write_run(run_dir, 3)
    adaptive_eval.archive_run(run_dir, archive)
    assert not adaptive_eval.restore_run(archive, run_dir)  # it has records: left alone
    fresh = tmp_path / "fresh" / "r"
    assert adaptive_eval.restore_run(archive, fresh)
    assert read_records(fresh / "samples.jsonl") == read_records(run_dir / "samples.jsonl")
    assert json.loads((fresh / "run.json").read_text()) == {"defense": "none", "seed": 0}
    assert not adaptive_eval.restore_run(tmp_path / "no_archive", tmp_path / "other")


def test_study_resumes_from_the_archive_and_draws_from_it(tiny_victim, cifar_batches_dir, tmp_path, monkeypatch):
    """End to end through evaluate.py: the run is archived when it ends; in a checkout without
    runs/ it is restored and resumed (nothing recomputed), and the report keeps it."""
    plan = [("tiny", "none", "clean,bpda_pgd(steps=3)", "8", 4)]
    monkeypatch.setitem(adaptive_eval.PLANS, "test", plan)
    report = tmp_path / "report"
    common = ["--plan", "test", "--report", str(report)]
    evaluate_args = ["--victim", str(tiny_victim), "--data-dir", str(cifar_batches_dir)]
    adaptive_eval.main([*common, "--runs-dir", str(tmp_path / "runs_a"), *evaluate_args])
    archived = report / "runs" / "tiny"
    records = adaptive_eval.archived_records(archived)
    assert len(records) == 8 and (archived / "results.json").is_file()
    first = json.loads((archived / "results.json").read_text())["rows"]

    adaptive_eval.main([*common, "--runs-dir", str(tmp_path / "runs_b"), *evaluate_args])  # a fresh checkout
    resumed = tmp_path / "runs_b" / "tiny"
    assert len(read_records(resumed / "samples.jsonl")) == 8  # restored, nothing appended
    assert [r["accuracy"] for r in json.loads((resumed / "results.json").read_text())["rows"]] == [
        r["accuracy"] for r in first
    ]
    md = (report / "README.md").read_text()
    assert "| tiny | none | bpda_pgd(steps=3) | adaptive |" in md and (report / "fig4_bpda.png").is_file()
    with gzip.open(archived / "samples.jsonl.gz") as f:
        assert len(f.read().splitlines()) == 8


def test_only_refuses_runs_the_plan_does_not_have():
    with pytest.raises(SystemExit, match="no run"):
        adaptive_eval.run_plan("cpu", Path("unused"), Path("unused"), ["nonesuch"], [])


def test_per_image_dip_defenses_run_in_small_chunks_so_a_killed_session_keeps_its_work():
    assert adaptive_eval.chunk_size("none", 100) == 100
    assert adaptive_eval.chunk_size("dip_stitch", 32) == 8
    assert adaptive_eval.chunk_size("glow_gate+dip_stitch", 32) == 8
    assert adaptive_eval.chunk_size("deep_protection(network=deep_protection_cifar)", 4) == 2
    assert adaptive_eval.chunk_size("dipdefend", 5) == 5
    assert adaptive_eval.chunk_size("dipdefend", 5, "cpu", "clean,hopskipjump(queries=200)") == 3
    assert adaptive_eval.chunk_size("none", 100, "cpu", "hopskipjump") == 100
    assert adaptive_eval.chunk_size("dip_stitch(pad=zero)", 100, "cpu", adaptive_eval.APGD_100) == 3
    assert adaptive_eval.chunk_size("none", 100, "cpu", adaptive_eval.APGD_100) == 100
    # A GPU fits 128 at a time for the price of 32; its plan's chunks fill a fit.
    assert adaptive_eval.chunk_size("dip_stitch", 1000, "gpu") == 128
    assert adaptive_eval.chunk_size("deep_protection(network=deep_protection_cifar)", 1000, "gpu") == 128
    assert adaptive_eval.chunk_size("none", 1000, "gpu") == 100


def test_eot_runs_get_a_line_of_their_own_in_fig4(tmp_path):
    row = {
        "eps": 8 / 255,
        "n": 4,
        "gradient": "bpda-identity",
        "any_iterate_curve": [1.0, 0.5],
        "iterate_curve": [1, 1],
    }
    row |= {"accuracy": 0.5, "accuracy_ci95_low": 0.1, "accuracy_ci95_high": 0.9}
    for name, attack in (("bpda", "bpda_pgd"), ("eot", "eot_pgd")):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"defense": "dip_stitch", "rows": [{**row, "attack": attack}]}))
    adaptive_eval.figures(tmp_path / "runs", tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| dip_stitch | bpda-identity | 4 |" in text and "| dip_stitch, EOT | bpda-identity | 4 |" in text


def test_fig5_takes_the_latest_hopskipjump_revision_over_larger_older_rows(tmp_path):
    variant = "queries=200,constraint=linf,threat=adaptive"
    row = {"attack": "hopskipjump", "variant": variant, "eps": None, "threat_model": "adaptive"}
    row |= {"accuracy": 0.5, "accuracy_ci95_low": 0.1, "accuracy_ci95_high": 0.9}
    curve = [[k / 255, 1.0] for k in range(26)]
    runs = (
        ("a_rev1", "none", 100, {}),
        ("b_rev4", "none", 50, {"queries_max": 200, "revision": 4}),
        ("f_rev3", "none", 300, {"queries_max": 200, "revision": 3}),
        ("c_rev2", "none", 200, {"queries_max": 200}),
        ("d_rev2", "dipdefend", 5, {"queries_max": 200}),
        ("e_rev1", "dipdefend", 9, {}),
    )
    for name, defense, n, extra in runs:
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        rows = [{**row, "n": n, "budget_curve": curve, **extra}]
        (run / "results.json").write_text(json.dumps({"defense": defense, "rows": rows}))
    adaptive_eval.figures(tmp_path / "runs", tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| none | 50 | at most 200 | 100.0 |" in text
    assert "| none | 200 |" not in text and "| none | 300 |" not in text
    assert (
        "| dipdefend | 5 | at most 200 (revision 2: chunk-wide initialisation" in text
        and "| dipdefend | 9 |" not in text
    )


def test_a_stopped_run_is_reported_over_its_finished_images(tiny_victim, cifar_batches_dir, tmp_path, monkeypatch):
    import evaluate

    runs, archive = tmp_path / "runs", tmp_path / "report" / "runs"
    out = runs / "partial"
    args = ["--victim", str(tiny_victim), "--data-dir", str(cifar_batches_dir), "--attacks", "clean,fgsm"]
    args += ["--num-samples", "8", "--batch-size", "4", "--out", str(out)]
    evaluate.main(args)
    records = read_records(out / "samples.jsonl")
    first = list(dict.fromkeys(r["index"] for r in records))[:4]
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records if r["index"] in first))
    (out / "results.json").unlink()  # killed after its first chunk
    manifest = json.loads((out / "run.json").read_text())
    manifest["command"] = manifest["command"].replace(str(out), "/elsewhere/partial")  # made in another checkout
    (out / "run.json").write_text(json.dumps(manifest))
    calls = []
    monkeypatch.setattr(adaptive_eval.subprocess, "run", lambda cmd, cwd: calls.append(cmd) or evaluate.main(cmd[2:]))
    adaptive_eval.archive_all(runs, archive)
    assert calls and calls[0][-3:] == ["--out", str(out), "--report-only"]
    result = json.loads((archive / "partial" / "results.json").read_text())
    assert result["complete_images"] == 4 and all(r["n"] == 4 for r in result["rows"])
    adaptive_eval.figures(archive, tmp_path / "report")
    assert "| partial (stopped: 4 of 8 images) |" in (tmp_path / "report" / "README.md").read_text()
    adaptive_eval.archive_all(runs, archive)  # its results are now newer than its records: not reported again
    assert len(calls) == 1


def test_each_plan_has_its_own_folders_and_the_cpu_report_says_dip_stitch_is_paper_literal(monkeypatch):
    # The plans share run names with other sample sizes; one folder would make evaluate.py refuse them.
    calls = []
    monkeypatch.setattr(
        adaptive_eval, "run_plan", lambda plan, runs, archive, only, extra: calls.append((runs, archive))
    )
    monkeypatch.setattr(adaptive_eval, "figures", lambda archive, report, notes: calls.append((report, notes)))
    adaptive_eval.main(["--plan", "gpu", "--only", "none"])
    adaptive_eval.main(["--plan", "cpu", "--only", "none"])
    repo = adaptive_eval.REPO
    assert calls[0] == (repo / "runs/adaptive_gpu", repo / "studies/adaptive_eval_gpu/runs")
    assert calls[1] == (repo / "studies/adaptive_eval_gpu", [])
    assert calls[2] == (repo / "runs/adaptive", repo / "studies/adaptive_eval/runs")
    assert calls[3] == (repo / "studies/adaptive_eval", [adaptive_eval.LITERAL_NOTE])
    # Every CPU-plan dip_stitch run keeps the reflection padding it was recorded with, except the
    # runs that measure the zero-padded default beside them (issue 12's, and issue 39's attacks).
    stitch = {entry[0]: entry[1] for entry in adaptive_eval.PLANS["cpu"] if "dip_stitch" in entry[1]}
    for name in (
        "dip_stitch_zero_pad",
        "dip_stitch_resubmit",
        "dip_stitch_rule",
        "dip_stitch_exact",
        "dip_stitch_apgd",
        "dip_stitch_zero_pad_apgd_survivors",
    ):
        assert stitch.pop(name) == "dip_stitch(pad=zero)"
    assert stitch and all("preset=paper_literal" in defense for defense in stitch.values())


def test_every_survivors_run_names_an_archived_parent_of_the_same_defense():
    """A --survivors-of row whose parent is missing or ran another defense (or other parameters)
    would stop hours in."""
    import json

    from dipdefense.defenses import build_defense
    from dipdefense.evaluation.options import load_options
    from dipdefense.evaluation.survivors import survivor_indices

    for plan in adaptive_eval.PLANS.values():
        for name, defense, _, _, _, *arguments in plan:
            words = arguments[0] if arguments else []
            if "--survivors-of" not in words:
                continue
            parent = adaptive_eval.REPO / words[words.index("--survivors-of") + 1]
            manifest = json.loads((parent / "run.json").read_text())
            o = load_options(["--defense", defense])
            params, parts = o["defense_params"], o["defense"].split("+")
            gated = {p: params[p] for p in parts if p in params} if len(parts) > 1 else params.get(parts[0], {})
            built = build_defense(o["defense"], **gated)
            mine = {**manifest, "defense": o["defense"], "defense_params": built.params()}
            survivors, finished = survivor_indices(parent, json.loads(json.dumps(mine)))
            assert 0 < len(survivors) < finished, name


def test_every_planned_run_names_attacks_that_build_against_its_defense():
    """A typo in a plan's attack list, or an attack its defense refuses (``backward=exact``
    through a defense with nothing to unroll), stops a run hours into a session: caught here."""
    from dipdefense.defenses import build_defense
    from dipdefense.evaluation.attack_specs import check_against_defense, expand_attacks, parse_call, parse_eps

    for plan, entries in adaptive_eval.PLANS.items():
        for name, defense_spec, attacks, eps, _images, *_ in entries:
            parts = [parse_call(part, "--defense") for part in defense_spec.split("+")]
            options = {part_name: params for part_name, params, _ in parts if params}
            defense_name = "+".join(part_name for part_name, _, _ in parts)
            if "+" in defense_name:
                defense = build_defense(defense_name, **options)
            else:
                defense = build_defense(defense_name, **options.get(defense_name, {}))
            runs = expand_attacks(attacks, parse_eps(eps))
            check_against_defense(runs, defense)
            assert all(run.build() is not None for run in runs if run.id != "clean"), (plan, name)
