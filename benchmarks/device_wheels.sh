#!/usr/bin/env bash
# The wheels a GPU machine without network access lacks for benchmarks/bench_gpu.py, at the
# pins of requirements.lock, downloaded here into .whl/ (git-ignored locally through
# .git/info/exclude) for a run that carries .whl and installs it first:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#
# The machine's image brings Python 3.12, NumPy, SciPy, pandas, PyYAML, h5py, ml-dtypes, rich,
# JAX (CUDA) and PyTorch; it lacks Keras and its two small dependencies, SimpleITK and nibabel
# (the inference part reads and writes .nii.gz). PY picks another Python version (default 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.12}
names=(keras namex optree simpleitk nibabel)
pins=()
for n in "${names[@]}"; do
    pin=$(grep -iE "^${n}==" requirements.lock) || { echo "device_wheels: ${n} is not in requirements.lock" >&2; exit 1; }
    pins+=("$pin")
done
mkdir -p .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
rm -rf .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
ls -l .whl
# a run carries the tracked tree, untracked files git does not ignore and .whl: 64 MiB at most
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r du -cb | awk 'END {print $1}')
whl=$(du -cb .whl/*.whl | awk 'END {print $1}')
echo "device_wheels: .whl ${whl} B + working tree ${tree} B = $(( (whl + tree) / 1048576 )) MiB of the 64 MiB a run carries"
