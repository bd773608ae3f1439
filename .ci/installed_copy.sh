#!/usr/bin/env bash
# An installed (non-editable) copy works from any directory: the console scripts run, the shipped
# configs and checkpoints are found as package data, and the wheel installs one top-level name,
# `dipdefense` (a top-level `evaluate` would shadow Hugging Face's `evaluate`; `common`, `nets` or
# `attacks` others). The dependencies come from .venv through a .pth line, which adds its
# site-packages without running its editable-install hook.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DIPDEF_CIFAR10:-}" ] && [ -f ../shared/data/cifar10-jpeg.tar.gz ]; then
  export DIPDEF_CIFAR10="$(realpath ../shared/data/cifar10-jpeg.tar.gz)"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/pip wheel -q --no-deps -w "$work/wheel" . 2>&1 | grep -v "^WARNING: Location" || true
python3 -m venv "$work/venv"
purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
purelib .venv/bin/python > "$(purelib "$work/venv/bin/python")/dipdef-dependencies.pth"
"$work/venv/bin/pip" install -q --no-deps "$work"/wheel/*.whl 2>&1 | grep -v "^WARNING: Location" || true
cd "$work"
# The wheel's top-level names: dipdefense alone (no evaluate/train/common/nets/... in site-packages).
top_level=$(python3 -c 'import sys, zipfile; print(" ".join(sorted({n.split("/")[0] for n in zipfile.ZipFile(sys.argv[1]).namelist() if ".dist-info/" not in n})) + " ")' "$work"/wheel/*.whl)
[ "$top_level" = "dipdefense " ] ||
  { echo "installed copy: the wheel installs top-level names other than dipdefense: $top_level" >&2; exit 1; }
"$work/venv/bin/python" -c 'import dipdefense.common.assets as a, sys; sys.exit(not a.__file__.startswith(sys.prefix))' ||
  { echo "installed copy: the project was imported from outside the fresh venv" >&2; exit 1; }
"$work/venv/bin/python" -c 'from dipdefense.common.assets import asset_dir as d; import sys; sys.exit(not (d("configs") / "evaluate_cifar.yaml").is_file())' ||
  { echo "installed copy: the shipped configs are not found as package data" >&2; exit 1; }
for command in dipdef-evaluate dipdef-train dipdef-compare; do "$work/venv/bin/$command" --help > /dev/null; done
# Fashion-MNIST from Debian's package (a small read); else CIFAR-10 where $DIPDEF_CIFAR10 points.
if [ -d /usr/share/datasets/fashion-mnist ]; then
  data=(--config evaluate_fmnist.yaml --eps 0.1)
elif [ -n "${DIPDEF_CIFAR10:-}" ]; then
  data=(--eps 8)
else
  echo "installed copy: no Fashion-MNIST or CIFAR-10 at hand; the tiny evaluation is skipped" >&2
  exit 0
fi
"$work/venv/bin/dipdef-evaluate" "${data[@]}" --attacks clean,fgsm --num_samples 8 \
  --out "$work/run" > "$work/evaluate.log" 2>&1 || { tail -20 "$work/evaluate.log" >&2; exit 1; }
"$work/venv/bin/dipdef-compare" "$work/run" --out "$work/compare" > /dev/null
grep -q '"num_samples": 8' "$work/run/results.json"
echo "installed copy: console scripts, shipped configs and checkpoints work from $work"
