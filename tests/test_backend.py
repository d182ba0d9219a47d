"""The Keras backend of the U-Net jobs (config ``dl.backend``, t2lesion.unet.backend): the
choice (auto = JAX where it sees a GPU, else TensorFlow; an uninstalled one is a one-line
error naming the key), made before Keras is imported, and the train and infer workflow scripts
run end to end on JAX (installed from requirements.lock: never skipped), each logging its
backend, device and precision; the JAX-trained model predicts the same under TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from t2lesion.errors import InputError
from t2lesion.unet import backend as B
from tests.conftest import REPO, default_xla_env

# --------------------------------------------------------------------------- the decision


def _installed(*names):
    return lambda backend: backend in names


def _probe(gpus=(), why=None):
    calls = []

    def probe():
        calls.append(1)
        return list(gpus), why

    probe.calls = calls
    return probe


def test_auto_takes_jax_only_where_jax_sees_a_gpu():
    with_gpu = _probe(["gpu:0 NVIDIA H200"])
    backend, reason = B.decide("auto", _installed("jax", "tensorflow", "torch"), with_gpu)
    assert backend == "jax" and "JAX, which sees gpu:0 NVIDIA H200" in reason
    no_gpu = _probe(why="Unknown backend: 'gpu' requested, but no platforms that are instances of gpu are present")
    backend, reason = B.decide("auto", _installed("jax", "tensorflow"), no_gpu)
    assert backend == "tensorflow"
    assert "JAX sees no GPU and would fall back to the CPU (JAX: Unknown backend: 'gpu'" in reason
    never = _probe(["gpu:0 X"])
    assert B.decide("auto", _installed("tensorflow", "torch"), never) == (
        "tensorflow", "dl.backend auto: TensorFlow, since JAX is not installed")
    assert never.calls == []  # JAX not installed: nothing to ask


def test_explicit_backend_is_taken_as_is_and_never_probes():
    probe = _probe(["gpu:0 X"])
    for name in ("jax", "tensorflow", "torch"):
        assert B.decide(name, _installed("jax", "tensorflow", "torch"), probe) == (name, f"dl.backend {name}")
    assert probe.calls == []


@pytest.mark.parametrize("setting, installed, message", [
    ("torch", ("jax", "tensorflow"), "dl.backend: torch is not installed here (no module 'torch')"),
    ("jax", ("tensorflow",), "dl.backend: jax is not installed here (no module 'jax')"),
    ("auto", (), "dl.backend: auto found no backend to run (JAX is not installed; TensorFlow is not installed)"),
    ("theano", ("tensorflow",), "dl.backend: 'theano' is not one of auto, jax, tensorflow, torch"),
])
def test_a_backend_that_cannot_run_is_one_line_naming_the_key(setting, installed, message):
    with pytest.raises(InputError) as err:
        B.decide(setting, _installed(*installed), _probe(why="none"))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_after_keras_is_imported_only_its_own_backend_is_accepted():
    import keras

    here = keras.backend.backend()
    assert B.select("auto").backend == here
    assert B.select(here).backend == here
    other = "jax" if here != "jax" else "tensorflow"
    with pytest.raises(InputError, match=f"dl.backend: {other} asked for, but this process imported Keras with"):
        B.select(other)


def _fresh_python(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=600,
                          cwd=REPO, check=False)


def test_auto_on_this_cpu_machine_is_tensorflow_and_says_jax_saw_no_gpu():
    """The real probe, in a fresh process: KERAS_BACKEND is set before Keras is imported (and
    a stray one in the environment overridden); JAX's own words say why it is not JAX."""
    code = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
from t2lesion.unet import backend
choice = backend.select("auto", gpu_leased=True)
assert "keras" not in sys.modules
import keras, os
print("KERAS", keras.backend.backend(), os.environ["KERAS_BACKEND"], choice.backend)
print("LINE", backend.job_line("float32"))
"""
    res = _fresh_python(code, KERAS_BACKEND="torch")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "KERAS tensorflow tensorflow tensorflow" in out
    assert "dl.backend auto: TensorFlow, since JAX sees no GPU and would fall back to the CPU (JAX: " in out
    assert "Platforms present are: cpu" in out and "KERAS_BACKEND=torch in the environment overridden" in out
    # a leased GPU that JAX cannot see is a warning, not an info line
    assert "WARNING dl.backend auto" in out and "this job leased a GPU" in out
    assert "LINE backend tensorflow, device cpu, precision float32" in out


def test_a_gpu_jax_sees_but_the_lease_did_not_find_is_a_warning():
    """nvidia-smi missing on a GPU machine: the lease finds no GPU, JAX finds one (here a
    stand-in probe): the job would run on it unleased, which the log must say."""
    code = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
from t2lesion.unet import backend
backend.installed = lambda name: name in ("jax", "tensorflow")
backend.jax_gpus = lambda: (["gpu:0 NVIDIA H100"], None)
print("CHOICE", backend.select("auto", gpu_leased=False).backend)
print("CHOICE", backend.select("auto", gpu_leased=True).backend)
"""
    res = _fresh_python(code)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("WARNING dl.backend auto: JAX, which sees gpu:0 NVIDIA H100") and \
        "but the GPU lease found no GPU" in lines[0] and "T2LESION_GPUS" in lines[0], lines
    assert lines[1] == "CHOICE jax" and lines[2].startswith("INFO dl.backend auto: JAX") and lines[3] == "CHOICE jax"


# --------------------------------------------------------------------------- the jobs on JAX

#: one Snakemake job (a fresh process, as Snakemake runs it): the workflow script with a stand-in
#: ``snakemake`` object; then, if asked, the predictions of a saved model on this backend
CHILD = """
import json, runpy, sys
from types import SimpleNamespace as NS

spec = json.loads(open(sys.argv[1]).read())
job = spec["job"]
ns = {k: NS(**job[k]) for k in ("input", "output", "params", "wildcards")}
smk = NS(log=[job["log"]], threads=1, config=spec["config"], **ns)
runpy.run_path(job["script"], init_globals={"snakemake": smk})
if spec.get("predict"):
    import numpy as np
    from t2lesion.unet.model import load_model
    model, x, out = spec["predict"]
    np.save(out, np.asarray(load_model(model, compile=False).predict_on_batch(np.load(x))[0]))
"""


def _run_job(tmp_path: Path, name: str, job: dict, config: dict, predict=None) -> str:
    """Run one job in a fresh process under ``config``; its log's text."""
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps({"job": job, "config": config, "predict": predict}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "tensorflow", "T2LESION_GPUS": "",
           "T2LESION_GPU_LOCKS": str(tmp_path / "locks"), "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-c", CHILD, str(spec)], env=env, capture_output=True, text=True,
                         timeout=900, cwd=REPO, check=False)
    log = Path(job["log"]).read_text() if Path(job["log"]).exists() else ""
    assert res.returncode == 0, f"{name}: " + res.stderr[-3000:] + log[-3000:]
    return log


MODEL = {"kind": "plain", "patch_size": [8, 16, 16], "widths": [4, 8], "strides": [[1, 2, 2]],
         "block_kernels": [[[1, 3, 3], [3, 3, 3]]] * 2, "supervision_levels": 1, "bn_momentum": 0.9}
TRAINING = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "learning_rate": 1e-2, "augment_fraction": 0.0,
            "workers": 0, "mixed_precision": "auto"}


def _train_job(tmp_path: Path) -> dict:
    """Two participants' stored visits (tests/test_unet_data.py), one fold each."""
    from tests.test_unet_data import make_visit, store
    from t2lesion.unet.patches import build_index

    rows = []
    for fold, pid in enumerate(("sub-01", "sub-02")):
        paths, _, _ = make_visit(tmp_path / "visits" / pid, seed=fold + 1)
        npy = tmp_path / "store" / f"{pid}_ses-w000.npy"
        npy.parent.mkdir(exist_ok=True)
        store(paths, npy, patch=tuple(MODEL["patch_size"]))
        rows.append({"participant_id": pid, "session": "ses-w000", "path": str(npy), "fold": fold})
    index = build_index(pd.DataFrame(rows), tuple(MODEL["patch_size"]), 0.2)
    files = []
    for fold in (0, 1):
        files.append(str(tmp_path / f"index_fold-{fold}.tsv"))
        index[index["fold"] == fold].to_csv(files[-1], sep="\t", index=False)
    out = tmp_path / "train" / "fold-0"
    out.mkdir(parents=True)
    return {"script": str(REPO / "workflow_scripts" / "train.py"), "log": str(tmp_path / "logs" / "train.log"),
            "input": {"index": files}, "wildcards": {"fold": "0"},
            "output": {k: str(out / n) for k, n in (("model", "model.keras"), ("last", "last.keras"),
                                                     ("history", "history.tsv"), ("curve", "training_curve.png"))},
            "params": {"resume_dir": str(out / "checkpoint"), "model": MODEL, "loss": {}, "training": TRAINING,
                       "seed": 7}}


def _infer_job(tmp_path: Path, model: str) -> tuple[dict, dict]:
    from tests.test_infer import _rigid, _write_visit

    visit = _write_visit(tmp_path, "sub-03_ses-w024", np.random.default_rng(8), _rigid((0, 0, 5), (2.0, 1.0, 0.0)))
    volume = str(tmp_path / "volumes" / "sub-03_ses-w024_volume.tsv")
    job = {"script": str(REPO / "workflow_scripts" / "infer.py"), "log": str(tmp_path / "logs" / "infer.log"),
           "input": {"models": [model]}, "output": {"volumes": [volume]}, "wildcards": {},
           "params": {"visits": [visit], "cfg": {"mc_samples": 2, "batch_size": 4}, "seed": 3, "channel_order": None,
                      "volume": {"connectivity": 18, "min_size": 3}}}
    return job, visit


def test_train_and_infer_jobs_on_jax_and_the_model_predicts_the_same_on_tensorflow(tmp_path):
    """dl.backend: jax through the real workflow scripts (lease, backend, rule log), each job in a
    fresh process as Snakemake runs it: one fold trained, a visit predicted with it; then the JAX-trained model, loaded
    here under TensorFlow, gives JAX's probabilities."""
    train = _train_job(tmp_path)
    infer, visit = _infer_job(tmp_path, train["output"]["model"])
    x = np.random.default_rng(0).normal(0, 1, (2, *MODEL["patch_size"], 3)).astype(np.float32)
    x[:, 2:6, 4:12, 4:12, :2] += 2.0  # a bright "lesion" in T2w and FLAIR
    np.save(tmp_path / "x.npy", x)
    # JAX compiles every op of a model's first build (~20 s here); through dl.compile_cache the
    # infer job reuses the train job's compilations instead of repeating them
    config = {"dl": {"backend": "jax", "compile_cache": str(tmp_path / "jax-cache")}}
    logs = {"train": _run_job(tmp_path, "train", train, config),
            "infer": _run_job(tmp_path, "infer", infer, config,
                              predict=[train["output"]["model"], str(tmp_path / "x.npy"), str(tmp_path / "jax.npy")])}
    for name, text in logs.items():
        assert "dl.backend jax (KERAS_BACKEND=tensorflow in the environment overridden)" in text, name
        assert "backend jax, device cpu, precision float32" in text, name
        assert f"JAX compilation cache: {tmp_path / 'jax-cache'} (dl.compile_cache), " in text, name
    assert ", 0 entries there, in use" in logs["train"] and ", 0 entries there" not in logs["infer"]
    assert "epoch 1/1: loss" in logs["train"] and "visit 1/1 sub-03_ses-w024" in logs["infer"]
    history = pd.read_csv(train["output"]["history"], sep="\t")
    assert len(history) == 1 and np.isfinite(history["loss"]).all()
    prob = sitk.GetArrayFromImage(sitk.ReadImage(visit["out_prob"]))
    assert np.isfinite(prob).all() and 0.0 <= prob.min() <= prob.max() <= 1.0
    assert Path(visit["out_native_mask"]).is_file() and Path(infer["output"]["volumes"][0]).is_file()

    from t2lesion.unet.model import load_model

    tf_pred = np.asarray(load_model(train["output"]["model"], compile=False).predict_on_batch(x)[0])
    jax_pred = np.load(tmp_path / "jax.npy")
    assert tf_pred.std() > 1e-3  # not a constant map: the comparison means something
    np.testing.assert_allclose(tf_pred, jax_pred, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- compile once

#: a job on JAX: the cache set as start_job sets it (dl.compile_cache, folder argv[1]); for each
#: seed in argv[3:] a small multi-arm model (the folds of a job: one config, other seeds, so
#: other weights) and the pipeline's MC predictor's first prediction on a batch of windows:
#: its seconds, the cache entries it added and its maps' SD; the first fold's maps saved to argv[2]
JOB = """
import logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from t2lesion.unet import backend
cache = Path(sys.argv[1])
backend.compile_cache(cache, "jax")
import numpy as np
from t2lesion.unet.infer import FoldPredictor
from t2lesion.unet.model import ModelConfig, build_model
x = np.random.default_rng(0).normal(size=(2, 8, 16, 16, 3)).astype("float32")
def entries():
    return sum(1 for p in cache.iterdir() if not p.name.startswith("."))
for k, seed in enumerate(sys.argv[3:]):
    model = build_model(ModelConfig.from_dict({
        "patch_size": (8, 16, 16), "widths": (4, 8), "strides": ((1, 2, 2),),
        "block_kernels": (((1, 3, 3), (3, 3, 3)),) * 2, "supervision_levels": 1, "seed": int(seed)}))
    before = entries()
    t0 = time.perf_counter()
    m = FoldPredictor(model, mc_samples=2).moments(x, 5)
    print(f"FOLD {seed} {time.perf_counter() - t0:.3f} {entries() - before} {float(np.asarray(m).std()):.6f}")
    if k == 0:
        np.save(sys.argv[2], m)
"""


def _jax_job(cache: Path, maps: Path, *seeds: int) -> tuple[str, list[tuple[float, int, float]]]:
    """Run :data:`JOB` as a fresh JAX job on the CPU, with XLA's default optimisation (the
    compiles a user's jobs make): its stdout and, per fold, (seconds of the first prediction,
    cache entries added, SD of the maps)."""
    res = subprocess.run(
        [sys.executable, "-c", JOB, str(cache), str(maps), *map(str, seeds)],
        env=default_xla_env({**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": ""}),
        capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    folds = [line.split()[1:] for line in res.stdout.splitlines() if line.startswith("FOLD ")]
    assert [int(f[0]) for f in folds] == list(seeds), res.stdout
    return res.stdout, [(float(t), int(n), float(sd)) for _, t, n, sd in folds]


def test_jax_compiles_once_per_model_for_every_fold_and_job(tmp_path):
    """dl.compile_cache. Within a job: the second fold (another seed of one config) compiles
    nothing, no new cache entries, since it loads the first fold's executables, and its first
    prediction takes a fraction of the first fold's (0.08× here, 0.77× with the cache off;
    asserted < 0.5×); its maps are its own. Across jobs: a second job (a fresh process) with
    the same model finds the first's executables in the folder, so its compile-and-first-call
    takes a fraction of the first's (~0.1×; asserted < 0.5×), and predicts the same."""
    cache = tmp_path / "jax-cache"
    out1, ((t1, new1, sd1), (t2, new2, sd2)) = _jax_job(cache, tmp_path / "m1.npy", 3, 4)
    assert f"JAX compilation cache: {cache} (dl.compile_cache), 0 entries there, in use" in out1
    assert new1 > 0, "the first fold's prediction compiled nothing into the cache"
    assert new2 == 0, f"the second fold compiled {new2} new program(s)"
    assert t2 < 0.5 * t1, f"first prediction: fold 1 {t1} s, fold 2 {t2} s"
    assert sd1 != sd2  # two models' predictions, not one model's twice

    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    out2, ((t3, new3, _),) = _jax_job(cache, tmp_path / "m2.npy", 3)
    assert f"JAX compilation cache: {cache} (dl.compile_cache), {len(entries)} entries there, in use" in out2
    assert new3 == 0
    assert t3 < 0.5 * t1, f"compile + first call: {t1:.2f} s, then {t3:.2f} s in a second job"
    np.testing.assert_array_equal(np.load(tmp_path / "m1.npy"), np.load(tmp_path / "m2.npy"))


def test_compile_cache_is_off_for_null_and_unused_on_other_backends(caplog):
    caplog.set_level("INFO")
    import jax

    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)  # as without JAX_COMPILATION_CACHE_DIR
    try:
        assert B.compile_cache(None, "jax") is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert "JAX compilation cache: off (dl.compile_cache: null)" in caplog.text
    assert B.compile_cache("results/cache/jax", "tensorflow") is None
    assert "JAX compilation cache: not used (dl.compile_cache results/cache/jax; the Keras backend is tensorflow)" \
        in caplog.text
