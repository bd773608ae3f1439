"""Defense-aware evaluation of every defense (paper 002 Sec. 4.3, Fig. 4-5; issue 11).

Runs ``evaluate.py`` once per (defense, attack set) in sequence, each into
``runs/adaptive/<name>`` (each resumes where a killed run stopped), then draws paper 002's
Fig. 4 (accuracy against the BPDA iteration, one panel per eps, one line per defense) and
Fig. 5 (accuracy against the perturbation budget, one panel per HopSkipJump query budget, one
line per defense) from their results.json, with tables, into ``--report``.

The DIP runs take hours on a CPU, longer than one working session, and ``runs/`` is not kept
in git. So each run's manifest, per-image records (gzipped) and results are archived in
``<report>/runs/<name>/`` (kept in git) after it ends and whenever the figures are drawn, and
a run whose folder is missing is restored from there first: a killed or moved run resumes
where its last archived record stopped, and the figures are drawn from the archive, so they
keep every run measured so far.

    python studies/adaptive_eval.py --plan cpu      # the sizes measured on 2 CPU cores
    python studies/adaptive_eval.py --plan gpu      # paper sizes (1,000 images; a GPU), in *_gpu folders
    python studies/adaptive_eval.py --figures-only  # archive what runs/ holds, redraw from the archive
"""

import argparse
import gzip
import json
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HSJ = ",".join(f"hopskipjump(queries={q},constraint=linf,threat=adaptive)" for q in (200, 1000, 2500))
GRADIENT = "clean,pgd,bpda_pgd,random_noise"
# Issue 39's attacks for a shattered defense: the rule-aware BPDA, identity BPDA then 4 resubmitted
# copies, EOT over 1/255 input noise with the seed known, NES (8 pairs), the pathwise gradient,
# APGD-CE and APGD-DLR (100 steps, BPDA's identity).
SHATTERED = (
    "bpda_pgd(backward=rule),bpda_pgd(resubmit=4),eot_pgd(noise=0.0039,seed_draws=false),"
    "bpda_pgd(backward=nes,steps=5),bpda_pgd(backward=exact,steps=5),"
    "apgd(threat=adaptive),apgd(loss=dlr,threat=adaptive)"
)
# Paper 004's INC on Fashion-MNIST (its config: the VAE, eta calibrated, 500-image batches),
# eps in [0, 1] units (paper 004's FGSM budgets halved, as in evaluate_inc_fmnist.yaml).
# The unbounded check (Carlini et al. 2019: an attack that does not reach ~0% at eps 255 is broken) starts from the
# clean image: a random start in the whole pixel range is itself a random image and would pass the check without
# the gradient doing anything.
UNBOUNDED = "bpda_pgd(random_start=false)"
# Against INC, sign steps of 64/255 leave the generator's range and are refused (77% with rejection on 100 images):
# the broken attack the check is there to catch. L2 steps of length 4 (eta is 4.5) from INC's own projection walk on
# the range instead: 4% on 100 images. The latent-space attack (Athalye et al. 2018 Sec. 5.3.1, on Defense-GAN)
# searches the generator's latent space itself.
UNBOUNDED_ON_RANGE = "bpda_pgd(random_start=false,step=l2,alpha=4,steps=40,on_range=true)"
INC_CONFIG = ("--config", "evaluate_inc_fmnist.yaml")
INC = [
    ("inc_fmnist", "inc", "clean,fgsm,bpda_pgd,random_noise", "0.05,0.1", 100, INC_CONFIG),
    ("inc_fmnist_unbounded", "inc", f"{UNBOUNDED},{UNBOUNDED_ON_RANGE},latent_space", "255", 100, INC_CONFIG),
]
DEEP_PROTECTION_CIFAR = "deep_protection(network=deep_protection_cifar)"
# The CPU plan's dip_stitch runs were measured before zero padding became its default (issue 12):
# they stay reflection-padded (the preset records the same parameters, so they resume).
DIP_STITCH_LITERAL = "dip_stitch(preset=paper_literal)"
LITERAL_NOTE = (
    "dip_stitch here (alone and behind glow_gate) is `dip_stitch(preset=paper_literal)`: reflection "
    "padding, dip_stitch's default until zero padding replaced it (issue 12)."
)
# (run name, defense, attacks, eps, images[, evaluate.py arguments]); runs sharing a defense and image count share the
# adversarial cache, so the second eps-8 run of a defense gets its eps-8 attacks for free. Every defense in the
# registry is attacked through itself, and gets the unbounded check. The cheap runs come first; the DIP runs cost
# hours here (benchmarks/RESULTS.md).
GPU_DEFENSES = (
    ("none", "none"),
    ("autoencoder", "autoencoder"),
    ("glow_gate", "glow_gate"),
    ("dip_stitch", "dip_stitch"),
    ("dipdefend", "dipdefend"),
    ("deep_protection", DEEP_PROTECTION_CIFAR),
    ("dip_inc", "dip_inc"),
    ("glow_gate_dip_stitch", "glow_gate+dip_stitch"),
)
APGD_100 = "clean,apgd(threat=adaptive),apgd(loss=dlr,threat=adaptive)"
ARCHIVE = "studies/adaptive_eval/runs"  # the archived parents of the --survivors-of runs
PLANS: dict[str, list[tuple]] = {
    "cpu": [
        ("none", "none", GRADIENT, "2,4,8", 100),
        ("autoencoder", "autoencoder", GRADIENT, "2,4,8", 100),
        ("none_eps8", "none", f"{GRADIENT},pgd(steps=15),autoattack(threat=adaptive),{HSJ}", "8", 100),
        ("autoencoder_eps8", "autoencoder", f"{GRADIENT},autoattack(threat=adaptive),{HSJ}", "8", 100),
        ("none_unbounded", "none", UNBOUNDED, "255", 100),
        # HopSkipJump again with its exact per-image budget (revision 4; the *_eps8 rows ran
        # revision 1): one 2,500-query run per chunk gives all three budgets.
        ("none_hsj", "none", f"clean,{HSJ}", "8", 100),
        ("autoencoder_hsj", "autoencoder", f"clean,{HSJ}", "8", 100),
        ("autoencoder_unbounded", "autoencoder", UNBOUNDED, "255", 100),
        ("glow_gate", "glow_gate", GRADIENT, "8", 100),
        ("glow_gate_unbounded", "glow_gate", UNBOUNDED, "255", 100),
        *INC,
        # Grown from 32 to 100 images (issue 39): dip_inc stops at its MSE threshold, so it is the
        # cheapest DIP defense here (about 40 s of attack per image).
        ("dip_inc", "dip_inc", GRADIENT, "8", 100),
        ("dip_inc_unbounded", "dip_inc", UNBOUNDED, "255", 4),
        # Issue 39's estimators through dip_inc on the first 32 of those images: about 400 fits per
        # image (APGD's 100 steps twice, EOT's 75, NES's 85), a few hours here. Not the rule-aware
        # backward: dip_inc's output has no x0 term, so its sign steps are the identity's.
        (
            "dip_inc_shattered",
            "dip_inc",
            "clean,bpda_pgd(resubmit=4),eot_pgd(noise=0.0039,seed_draws=false),bpda_pgd(backward=nes,steps=5),"
            "bpda_pgd(backward=exact,steps=5),apgd(threat=adaptive),apgd(loss=dlr,threat=adaptive)",
            "8",
            32,
        ),
        # APGD-CE and APGD-DLR at 100 steps (Croce et al. 2022's strongest against test-time defenses)
        # as AutoAttack runs them: only on the images the cheaper attacks left right (evaluate.py
        # --survivors-of), so the worst case over both runs is theirs on all 100 images.
        ("dip_inc_apgd_survivors", "dip_inc", APGD_100, "8", 100, ["--survivors-of", f"{ARCHIVE}/dip_inc"]),
        ("dip_stitch", DIP_STITCH_LITERAL, GRADIENT, "8", 32),
        ("dip_stitch_unbounded", DIP_STITCH_LITERAL, UNBOUNDED, "255", 4),
        ("glow_gate_dip_stitch", "glow_gate+" + DIP_STITCH_LITERAL, "clean,pgd,bpda_pgd", "8", 32),
        ("glow_gate_dip_stitch_unbounded", "glow_gate+" + DIP_STITCH_LITERAL, UNBOUNDED, "255", 4),
        # dipdefend's BPDA took one 32-image chunk (about 2 h here); its noise baseline runs apart, in chunks of 8.
        ("dipdefend", "dipdefend", "clean,pgd,bpda_pgd", "8", 32),
        ("dipdefend_noise", "dipdefend", "clean,random_noise", "8", 32),
        ("dipdefend_unbounded", "dipdefend", UNBOUNDED, "255", 4),
        # Paper 001's 5-scale network leaves 32x32 images at 1x1 (refused); its 4-scale version
        # costs 41 ms per image-step here (8x the CIFAR network at B = 8), 72 s per 1750-iteration
        # fit: 34 fits per image under GRADIENT, about 80 min per chunk of 2 images (the GPU plan has
        # 1,000). The other DIP defenses fell to 0% at the first iterate of their 15-step unbounded
        # checks, so this one takes 4 steps (it fell at the second).
        ("deep_protection", DEEP_PROTECTION_CIFAR, GRADIENT, "8", 4),
        ("deep_protection_unbounded", DEEP_PROTECTION_CIFAR, "bpda_pgd(random_start=false,steps=4)", "255", 2),
        ("dip_stitch_eot", DIP_STITCH_LITERAL, "clean,eot_pgd", "8", 16),
        ("dip_stitch_eps24", DIP_STITCH_LITERAL, "clean,bpda_pgd", "2,4", 32),
        ("dipdefend_eps24", "dipdefend", "clean,bpda_pgd", "2,4", 32),
        # BPDA at 2 and 4 broke dip_stitch at the first iterate and never after (its last iterate rose
        # above clean): the noise baseline at those budgets says how much of that is luck.
        ("dip_stitch_noise24", DIP_STITCH_LITERAL, "clean,random_noise", "2,4", 32),
        (
            "dip_stitch_hsj200",
            DIP_STITCH_LITERAL,
            "clean,hopskipjump(queries=200,constraint=linf,threat=adaptive)",
            "8",
            5,
        ),
        ("dipdefend_hsj200", "dipdefend", "clean,hopskipjump(queries=200,constraint=linf,threat=adaptive)", "8", 5),
        # dip_stitch's default since issue 12 (zero padding), through the same attacks as its
        # paper_literal row; named by its setting, so a later default cannot change what it resumes.
        # Grown from 32 to 100 images (issue 39); about 20 min per chunk of 8 here, so it takes
        # sessions: it resumes chunk by chunk.
        ("dip_stitch_zero_pad", "dip_stitch(pad=zero)", GRADIENT, "8", 100),
        # Issue 39: the same BPDA-PGD, then each image it did not break resubmitted as 4 copies of its
        # last iterate with uniform +-1/255 noise (the shattered fit draws a fresh output for each).
        ("dip_stitch_resubmit", "dip_stitch(pad=zero)", "clean,bpda_pgd(resubmit=4)", "8", 32),
        # The rule-aware backward (dip.rule_aware) at the identity's cost, on the same 32 images, then
        # the same resubmission of what it leaves.
        ("dip_stitch_rule", "dip_stitch(pad=zero)", "clean,bpda_pgd(backward=rule,resubmit=4)", "8", 32),
        # The pathwise gradient through the unrolled fit: a fit and its backward per step.
        ("dip_stitch_exact", "dip_stitch(pad=zero)", "clean,bpda_pgd(backward=exact,steps=5)", "8", 8),
        # APGD-CE (Croce & Hein 2020; Croce et al. 2022 through test-time defenses) with BPDA's
        # identity, at BPDA-PGD-15's cost, on the 16 images of dip_stitch_rule16.
        ("dip_stitch_apgd", "dip_stitch(pad=zero)", "clean,apgd(steps=15,threat=adaptive)", "8", 16),
        # The same cascade through the other DIP defenses (each APGD step is a fit: about 10 min per
        # image and loss through dip_stitch here, so these take sessions; survivors of the
        # identity BPDA, noise and PGD).
        *[
            (f"{name}_apgd_survivors", defense, APGD_100, "8", 100, ["--survivors-of", f"{ARCHIVE}/{name}"])
            for name, defense in [
                ("dip_stitch_zero_pad", "dip_stitch(pad=zero)"),
                ("dipdefend", "dipdefend"),
                ("dip_stitch", DIP_STITCH_LITERAL),
                ("glow_gate_dip_stitch", "glow_gate+" + DIP_STITCH_LITERAL),
            ]
        ],
    ],
    "gpu": [
        (name, defense, f"{GRADIENT},eot_pgd,{HSJ}", "2,4,8", 1000)
        for name, defense in GPU_DEFENSES
        if name != "glow_gate"
    ]
    + [
        (f"{name}_shattered", defense, f"clean,{SHATTERED}", "8", 128)
        for name, defense in GPU_DEFENSES
        if name not in ("none", "autoencoder", "glow_gate")
    ]
    + [("glow_gate", "glow_gate", GRADIENT, "2,4,8", 1000)]
    + [(f"{name}_unbounded", defense, UNBOUNDED, "255", 100) for name, defense in GPU_DEFENSES]
    + INC,
}
# Paper 002 Fig. 4-5 give their figures only as plots; its text says (Sec. 4.3.1-4.3.2):
PAPER_NOTE = (
    "Paper 002 gives Fig. 4 and Fig. 5 as plots only. Its text: under BPDA at L-inf 2 the proposed "
    "defense 'displays robustness' and outperforms DIPDefend by about 3%; at 4/8 it beats DIPDefend by "
    "about 10% and SR by about 50%; under HSJ it 'consistently outperforms' the baselines at 200/1000/2500 "
    "queries (boxed values at iteration 15 and at eps 8 are not legible in our copy)."
)


ARCHIVED = ("run.json", "results.json")  # copied as they are; samples.jsonl is gzipped


def archive_run(run_dir: Path, archive_dir: Path) -> bool:
    """Copy ``run_dir``'s manifest, results and records into ``archive_dir``; False if it has no records.

    Only complete lines are kept (a run killed mid-write leaves a partial last line), and an
    archive is only ever replaced by one holding at least as many records, so archiving a
    fresh, emptier copy of a run never loses work.
    """
    from dipdefense.common.atomic_files import atomic_write
    from dipdefense.evaluation.sample_log import read_records

    samples = run_dir / "samples.jsonl"
    if not (run_dir / "run.json").is_file() or not samples.is_file():
        return False
    records = read_records(samples)
    if len(records) < len(archived_records(archive_dir)):
        print(f"{run_dir}: {len(records)} records, fewer than the archive's; the archive is kept", flush=True)
        return False
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
    # mtime=0: the same records give the same bytes, so git sees no change
    atomic_write(archive_dir / "samples.jsonl.gz", lambda tmp: Path(tmp).write_bytes(gzip.compress(lines, mtime=0)))
    for name in ARCHIVED:
        if (run_dir / name).is_file():
            atomic_write(archive_dir / name, lambda tmp, n=name: shutil.copyfile(run_dir / n, tmp))
        else:
            (archive_dir / name).unlink(missing_ok=True)  # results of an older, shorter state of the run
    return True


def archived_records(archive_dir: Path) -> list[dict]:
    path = archive_dir / "samples.jsonl.gz"
    if not path.is_file():
        return []
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines() if line.strip()]


def restore_run(archive_dir: Path, run_dir: Path) -> bool:
    """Lay an archived run into ``run_dir`` for evaluate.py to resume; only where it has no records."""
    if (run_dir / "samples.jsonl").exists() or not (archive_dir / "samples.jsonl.gz").is_file():
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(archive_dir / "run.json", run_dir / "run.json")
    (run_dir / "samples.jsonl").write_bytes(gzip.decompress((archive_dir / "samples.jsonl.gz").read_bytes()))
    return True


def report_stopped_run(run_dir: Path) -> None:
    """A run stopped mid-way has records newer than its results (or none): have evaluate.py
    report it over the images every attack has finished (``--report_only``), so its figures
    count in the tables now rather than when the whole run ends, sessions later."""
    samples, results = run_dir / "samples.jsonl", run_dir / "results.json"
    if not (run_dir / "run.json").is_file() or not samples.is_file():
        return
    if results.is_file() and results.stat().st_mtime >= samples.stat().st_mtime:
        return
    command = shlex.split(json.loads((run_dir / "run.json").read_text())["command"])
    if command[:2] != ["python", "evaluate.py"]:
        return
    arguments = command[2:]
    if "--out" in arguments:  # the folder it is in now (a restored archive, another checkout)
        del arguments[arguments.index("--out") : arguments.index("--out") + 2]
    print(f"{run_dir.name}: stopped mid-way; reporting its finished images", flush=True)
    subprocess.run([sys.executable, "evaluate.py", *arguments, "--out", str(run_dir), "--report-only"], cwd=REPO)


def archive_all(runs_dir: Path, archive: Path) -> None:
    for run_dir in sorted(p for p in runs_dir.glob("*") if p.is_dir()):
        report_stopped_run(run_dir)
        archive_run(run_dir, archive / run_dir.name)


# Records are appended chunk by chunk, so a chunk is the work a killed run loses. A DIP chunk under
# BPDA or random noise costs 15-16 fits per image (dipdefend: over an hour for 32 images on 2 cores),
# longer than the rest of a working session, so the per-image defenses go in chunks of 8, and
# deep_protection (over a minute per image-fit) in chunks of 2. HopSkipJump at 200 queries costs
# about 200 fits per image (5 images through dipdefend: about 2.3 h), so it goes in chunks of 3, and so
# do APGD-CE and APGD-DLR at 100 steps (a fit per step: about 20 min per image through dip_stitch).
# On a GPU a fit step costs about the same from 1 to 32 images (benchmarks/RESULTS.md, "On a GPU"), so the GPU plan's chunks are
# the DIP defenses' GPU dip_batch (128): a chunk of 8 there would run at a sixth of the speed.
PER_IMAGE_FITS = ("dip_stitch", "dipdefend", "deep_protection", "dip_inc")


def chunk_size(defense: str, images: int, plan: str = "cpu", attacks: str = "") -> int:
    parts = [part.split("(")[0] for part in defense.split("+")]
    if plan == "gpu":
        from dipdefense.defenses.dip_purifier import DIPPurifier

        return min(images, DIPPurifier.gpu_dip_batch if any(part in PER_IMAGE_FITS for part in parts) else 100)
    if "deep_protection" in parts:
        return min(images, 2)
    if ("hopskipjump" in attacks or "apgd" in attacks) and any(part in PER_IMAGE_FITS for part in parts):
        return min(images, 3)
    if any(part in PER_IMAGE_FITS for part in parts):
        return min(images, 8)
    return min(images, 100)


def recorded_chunk_size(run_dir: Path) -> int | None:
    """The chunk size a run already in ``run_dir`` was made with (evaluate.py refuses another)."""
    from dipdefense.evaluation.run_folder import recorded_batch_size

    manifest = run_dir / "run.json"
    if not manifest.is_file():
        return None
    previous = json.loads(manifest.read_text())
    return previous.get("batch_size") or recorded_batch_size(previous)


def run_plan(plan: str, runs_dir: Path, archive: Path, only: list[str] | None, extra: list[str]) -> None:
    """The plan's runs in order, or the ``only`` ones in the order given; each restored from
    ``archive`` first where its folder is missing, and archived when it ends."""
    by_name = {entry[0]: entry for entry in PLANS[plan]}
    unknown = sorted(set(only or []) - set(by_name))
    if unknown:
        raise SystemExit(f"--only: no run(s) {unknown} in plan {plan!r}; its runs: {', '.join(by_name)}")
    for name in only or list(by_name):
        name, defense, attacks, eps, images, *arguments = by_name[name]
        out = runs_dir / name
        if restore_run(archive / name, out):
            print(f"{name}: resuming from the records archived in {archive / name}", flush=True)
        cmd = [sys.executable, "evaluate.py", "--defense", defense, "--attacks", attacks, "--eps", eps]
        # A resume keeps the run's own chunks.
        batch = recorded_chunk_size(out) or chunk_size(defense, images, plan, attacks)
        cmd += ["--num-samples", str(images), "--batch-size", str(batch), "--out", str(out)]
        cmd += [*(arguments[0] if arguments else ()), *extra]
        print("$", " ".join(cmd), flush=True)
        done = subprocess.run(cmd, cwd=REPO)
        if done.returncode:
            report_stopped_run(out)
        archive_run(out, archive / name)
        if done.returncode:
            print(f"{name}: evaluate.py exited {done.returncode}; going on with the next run", flush=True)


def load_runs(archive: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(archive.glob("*/results.json")):
        found[path.parent.name] = json.loads(path.read_text())
    return found


# What each HopSkipJump revision counted, for rows of older runs (dipdefense/attacks/hopskipjump.py).
HSJ_REVISIONS = {
    1: "revision 1: estimated budget",
    2: "revision 2: chunk-wide initialisation charged to every image",
    3: "revision 3: images no noise draw fooled left unattacked",
}


def _revision(row: dict) -> int:
    """A HopSkipJump row's revision (rows before revision 3 did not name it; revision 2 counted queries)."""
    return row.get("revision") or (2 if row.get("queries_max") is not None else 1)


def figures(archive: Path, report: Path, notes: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dipdefense.common.atomic_files import atomic_write, atomic_write_text
    from dipdefense.evaluation.metrics import wilson_interval

    runs = load_runs(archive)
    report.mkdir(parents=True, exist_ok=True)
    # Fig. 4: bpda_pgd curves by eps, one line per defense (the largest sample per defense and eps);
    # EOT-PGD (the gradient averaged over defense draws) as a line of its own, dashed
    curves: dict[float, dict[str, dict]] = defaultdict(dict)
    budgets: dict[str, dict[str, dict]] = defaultdict(dict)
    for result in runs.values():
        for row in result["rows"]:
            if row["attack"] in ("bpda_pgd", "eot_pgd") and row.get("any_iterate_curve") and row["eps"] < 1:
                line = result["defense"] + (", EOT" if row["attack"] == "eot_pgd" else "")
                best = curves[row["eps"]].get(line)
                if best is None or row["n"] > best["n"]:
                    curves[row["eps"]][line] = row
            if row.get("budget_curve") and row.get("threat_model") == "adaptive":
                # the latest revision of the attack first, then the most images
                best = budgets[row["variant"]].get(result["defense"])
                if best is None or (_revision(row), row["n"]) > (_revision(best), best["n"]):
                    budgets[row["variant"]][result["defense"]] = row
    md = ["# Defense-aware evaluation: paper 002 Fig. 4 and Fig. 5 shapes\n", PAPER_NOTE + "\n"]
    md += [note + "\n" for note in notes or []]
    if curves:
        eps_values = sorted(curves)
        fig, axes = plt.subplots(1, len(eps_values), figsize=(4.2 * len(eps_values), 3.6), squeeze=False)
        md.append("## BPDA-PGD and EOT-PGD: accuracy after iteration k (any iterate that fools counts)\n")
        for ax, eps in zip(axes[0], eps_values, strict=True):
            width = max(len(r["any_iterate_curve"]) for r in curves[eps].values())
            md.append(f"L-inf {eps * 255:.4g}/255:\n")
            md.append("| defense | gradient | n | " + " | ".join(str(k) for k in range(width)) + " |")
            md.append("|" + " --- |" * (3 + width))
            for defense, row in sorted(curves[eps].items()):
                curve = [100 * a for a in row["any_iterate_curve"]]
                style = "--" if row["attack"] == "eot_pgd" else "-"
                ax.plot(range(len(curve)), curve, style, marker="o", ms=3, label=f"{defense} (n={row['n']})")
                md.append(
                    f"| {defense} | {row['gradient']} | {row['n']} | " + " | ".join(f"{a:.1f}" for a in curve) + " |"
                )
            md.append("")
            ax.set_title(f"BPDA-PGD (EOT dashed), L-inf {eps * 255:.4g}/255")
            ax.set_xlabel("iteration")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        atomic_write(report / "fig4_bpda.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
        plt.close(fig)
    if budgets:
        variants = sorted(budgets, key=lambda v: int(v.split("queries=")[1].split(",")[0]) if "queries=" in v else 0)
        fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 3.6), squeeze=False)
        md.append("## HopSkipJump through the defense: accuracy against the L-inf budget\n")
        for ax, variant in zip(axes[0], variants, strict=True):
            md.append(f"{variant}:\n")
            md.append("| defense | n | queries | " + " | ".join(f"{k}/255" for k in range(0, 26, 4)) + " |")
            md.append("|" + " --- |" * 10)
            for defense, row in sorted(budgets[variant].items()):
                points = row["budget_curve"]
                ax.plot(
                    [p[0] * 255 for p in points],
                    [100 * p[1] for p in points],
                    marker="o",
                    ms=3,
                    label=f"{defense} (n={row['n']}"
                    + (f", revision {_revision(row)}" if _revision(row) in HSJ_REVISIONS else "")
                    + ")",
                )
                queries = f"at most {row['queries_max']}" if row.get("queries_max") is not None else "estimated"
                queries += f" ({HSJ_REVISIONS[_revision(row)]})" if _revision(row) in HSJ_REVISIONS else ""
                if row.get("unattacked"):
                    queries += f"; {row['unattacked']} found no start (never attacked)"
                if row.get("rescore_disagreements") is not None:  # rows before 2026-12-05 were scored by a re-run
                    queries += f"; scored by the oracle's answers, a re-run disagrees on {row['rescore_disagreements']}"
                md.append(
                    f"| {defense} | {row['n']} | {queries} | "
                    + " | ".join(f"{100 * points[k][1]:.1f}" for k in range(0, 26, 4))
                    + " |"
                )
            md.append("")
            ax.set_title(variant.replace(",constraint=linf,threat=adaptive", ""), fontsize=8)
            ax.set_xlabel("L-inf budget (/255)")
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        atomic_write(report / "fig5_hsj.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
        plt.close(fig)
    md.append("## Every run\n")
    md.append(
        "| run | defense | attack | threat model | gradient | eps (/255) | n | accuracy | 95% CI | last iterate "
        "| with rejection |"
    )
    md.append("|" + " --- |" * 11)
    for run_name, result in runs.items():
        # a run stopped mid-way (reported with --report_only) says how far it got
        done = result.get("complete_images")
        name = run_name if done is None else f"{run_name} (stopped: {done} of {result['num_samples']} images)"
        cascade = result.get("survivors_of")  # evaluate.py --survivors-of: only what its parent left right
        if cascade:
            name += (
                f" (the {cascade['survivors']} of {cascade['parent_images']} {Path(cascade['run']).name} left right)"
            )
        for row in result["rows"]:
            eps = "-" if row["eps"] is None else f"{row['eps'] * 255:.4g}"
            attack = f"{row['attack']}({row['variant']})" if row.get("variant") else row["attack"]
            last, rejecting = row.get("last_iterate_accuracy"), row.get("accuracy_with_rejection")
            md.append(
                f"| {name} | {result['defense']} | {attack} | {row.get('threat_model', 'oblivious')} | "
                f"{row.get('gradient') or '-'} | {eps} | {row['n']} | {100 * row['accuracy']:.1f}% | "
                f"{100 * row['accuracy_ci95_low']:.1f}-{100 * row['accuracy_ci95_high']:.1f}% | "
                f"{'-' if last is None else f'{100 * last:.1f}%'} | "
                f"{'-' if rejecting is None else f'{100 * rejecting:.1f}%'} |"
            )
        for w in result.get("worst_case", []):
            md.append(
                f"| {name} | {result['defense']} | worst case | {w['threat_model']} | - | {w['eps'] * 255:.4g} | "
                f"{w['n']} | {100 * w['accuracy']:.1f}% | {100 * w['accuracy_ci95_low']:.1f}-"
                f"{100 * w['accuracy_ci95_high']:.1f}% | - | - |"
            )
        if cascade:
            right = round(cascade["worst_case_accuracy"] * cascade["parent_images"])
            low, high = wilson_interval(right, cascade["parent_images"])
            bound = "at most " if cascade.get("upper_bound") else ""
            md.append(
                f"| {name} | {result['defense']} | worst case with {Path(cascade['run']).name} | - | - | - | "
                f"{cascade['parent_images']} | {bound}{100 * cascade['worst_case_accuracy']:.1f}% | "
                f"{100 * low:.1f}-{100 * high:.1f}% | - | - |"
            )
    md.append("\n## Sanity checks (Carlini et al. 2019)\n")
    md.append("| run | check | figures | verdict |")
    md.append("| --- | --- | --- | --- |")
    for name, result in runs.items():
        for c in result.get("sanity_checks", []):
            md.append(f"| {name} | {c['check']} | {c['figures']} | {c['verdict']} |")
    atomic_write_text(report / "README.md", "\n".join(md) + "\n")
    print(f"wrote {report}/README.md" + (", fig4_bpda.png" if curves else "") + (", fig5_hsj.png" if budgets else ""))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", choices=sorted(PLANS), default="cpu")
    p.add_argument("--only", help="comma list of run names from the plan")
    # Each plan has its own folders: the plans share run names (dip_stitch, none, ...) with other
    # sample sizes, and evaluate.py refuses a folder that holds another run's records.
    p.add_argument("--runs-dir", help="default: runs/adaptive (cpu plan), runs/adaptive_gpu (gpu plan)")
    p.add_argument(
        "--report",
        help="where the figures, tables and the runs/ archive go; default: studies/adaptive_eval (cpu plan), "
        "studies/adaptive_eval_gpu (gpu plan)",
    )
    p.add_argument("--figures-only", action="store_true", help="archive what --runs-dir holds, then redraw")
    args, extra = p.parse_known_args(argv)  # anything else goes to evaluate.py (--devices 4, ...)
    suffix = "" if args.plan == "cpu" else f"_{args.plan}"
    runs_dir = REPO / (args.runs_dir or f"runs/adaptive{suffix}")
    report = REPO / (args.report or f"studies/adaptive_eval{suffix}")
    if args.figures_only:
        archive_all(runs_dir, report / "runs")
    else:
        run_plan(args.plan, runs_dir, report / "runs", args.only.split(",") if args.only else None, extra)
    figures(report / "runs", report, notes=[LITERAL_NOTE] if args.plan == "cpu" else [])


if __name__ == "__main__":
    main()
