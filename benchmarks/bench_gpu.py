"""The U-Net on a GPU machine: per-visit inference, compile once, training steps beside a plain
PyTorch peer, and the loader (issues 13, 14, 27).

One script for one device run; each part runs in its own process (one Keras backend per
process, a failure or a time-out in one part still lets the others print) under a shared
time budget. The JAX parts share one persistent compilation cache, set as every pipeline job
sets ``dl.compile_cache`` (``t2lesion.unet.backend.compile_cache``). Parts, in the default order:

``prep``        synthetic inputs (NumPy/SimpleITK only): a visit on the MNI 1×1×3 mm grid
                (63 × 233 × 197, z, y, x) with random intensities inside a brain ellipsoid,
                written as the preprocessed .nii.gz the ``infer`` rule reads (3 contrasts, brain
                mask, a native FLAIR and an identity FLAIR → MNI transform), and the same grid
                stored for training (``patches`` layout, ~40 lesions, α) with its window index.
``infer``       (JAX) ``t2lesion.unet.infer.predict_visits``, the function the ``infer`` rule
                calls (workflow_scripts/infer.py), at the paper's settings (configs/paper.yaml
                model, the schema's ``inference:`` defaults: 10 MC passes per fold, 20 % overlap,
                Gaussian blending, batch 8): 3 untrained fold models built, compiled and saved as
                ``.keras`` as ``train.train_fold`` writes them (mixed bf16 on a GPU, optimizer
                state included), several visits in one call. Reports the models' load time, the
                first visit (compiling) and the steady-state visits (read / predict / write
                seconds; write includes the native-space mask).
``infer_cached`` (JAX) the same job again in a fresh process, with the same models and the
                compilation cache ``infer`` filled: what a second inference job's first visit
                costs (issue 27: compile once per model, not per job).
``train``       (JAX) the training step as ``train_fold`` builds it (paper loss, Adam 1e-4,
                precision ``auto``, ``jit_compile="auto"``), batch 10 of 32 × 96 × 96 drawn
                by the pipeline's loader: first step (compiling) and steady-state seconds per step.
``torchpeer``   (plain PyTorch, no Keras) the same network written in torch
                (benchmarks/torch_unet.py): training steps (Adam, BCE on the finest head, bf16
                autocast on a GPU) at the train part's batch and MC-dropout inference of 8 windows
                × 10 passes, to set the pipeline's Keras figures beside hand-written torch on the
                same device.
``loader``      (Keras' NumPy backend, CPU only) ``PatchDataset`` batches of 10 at 32 × 96 × 96:
                one core, then 4 and 16 threads (``training.loader: threads``), 16 processes of a
                forked pool sending batches through pipes (as Keras' own process workers do),
                and 4 and 16 worker processes over shared memory (``training.loader:
                processes``), augmented patches per second.
``trainfold``   (JAX, only if time is left) ``train.train_fold`` itself for 2 short epochs
                on the pipeline's loader as configs/paper.yaml sets it (4 worker processes
                over shared memory; stage.run_train's setup).
``infer2``      (torch, if time is left) ``infer`` on Keras' torch backend.

On the device machine: first, here, ``benchmarks/device_wheels.sh`` downloads the wheels its
image lacks (keras, namex, optree, simpleitk, nibabel at the lock's pins) into .whl, then one
run that carries .whl, from the repository root (the working tree travels; this script puts
its checkout's ``t2lesion`` first on the path):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; \
    PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py --out $OUT

with ``timeout_s`` 590: the default budget (540 s) lets the parts run to the end in order and
skips those the time left cannot hold. On an H200 (2026-11-29) the first JAX visit took ~48 s
(compiling) and the first training step ~90 s. ``--parts`` picks some.

Locally, tiny sizes on one core (a smoke test, not a benchmark):

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/bench_gpu.py --tiny \
        --backends torch --parts prep,infer,train,torchpeer,loader --out /tmp/bench_gpu

and every part as the GPU run goes (about 20 min on 2 cores: JAX compiles slowly on a CPU):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_gpu.py --tiny --cap-scale 10 --budget 3000 \
        --out /tmp/bench_gpu

Prints Markdown-ready lines (``| ... |``) and writes ``bench_gpu.log`` and ``bench_gpu.json``
under ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's t2lesion and benchmarks first
FULL_GRID = (63, 233, 197)  # the MNI 1x1x3 mm grid, (z, y, x)
PAPER_MODEL = {"kind": "multiarm", "patch_size": [32, 96, 96], "widths": [32, 64, 128, 256],
               "dropout_rate": 0.2, "supervision_levels": 3}
PAPER_LOSS = {"gamma_start": 0.02, "gamma_end": 0.15, "alpha_max": 100.0}
PAPER_TRAINING = {"epochs": 30, "batch_size": 10, "learning_rate": 1e-4, "mixed_precision": "auto",
                  "augment_fraction": 0.5, "workers": 4}
SEED = 2023
FOLDS = 3


def emit(*parts) -> None:
    print(*parts, flush=True)


# --------------------------------------------------------------------------- settings


def paper_sections(tiny: bool) -> tuple[dict, dict, dict]:
    """model, loss, training sections: configs/paper.yaml over the schema defaults (tiny: CPU sizes)."""
    model, loss, training = dict(PAPER_MODEL), dict(PAPER_LOSS), dict(PAPER_TRAINING)
    for base in (ROOT, Path.cwd()):
        path = base / "configs" / "paper.yaml"
        if path.is_file():
            try:
                import yaml

                cfg = yaml.safe_load(path.read_text()) or {}
                model.update(cfg.get("model") or {})
                loss.update(cfg.get("loss") or {})
                training.update(cfg.get("training") or {})
            except Exception as exc:  # noqa: BLE001 - fall back to the copy above
                emit(f"(configs/paper.yaml unreadable: {exc}; using the built-in copy)")
            break
    if tiny:
        model.update(patch_size=[16, 48, 48], widths=[4, 8, 16, 32])
        training.update(batch_size=2)
    return model, loss, training


def inference_cfg(tiny: bool) -> dict:
    from t2lesion.unet.infer import CFG_DEFAULTS

    cfg = dict(CFG_DEFAULTS)  # the schema's inference defaults (the paper's)
    if tiny:
        cfg.update(mc_samples=2, batch_size=2)
    return cfg


def grid(tiny: bool) -> tuple[int, int, int]:
    return (24, 80, 72) if tiny else FULL_GRID


# --------------------------------------------------------------------------- part: prep


def part_prep(work: Path, tiny: bool) -> dict:
    import numpy as np
    import SimpleITK as sitk

    t0 = time.perf_counter()
    shape = grid(tiny)
    rng = np.random.default_rng(0)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = [(n - 1) / 2 for n in shape]
    brain = ((zz - c[0]) / (0.45 * shape[0])) ** 2 + ((yy - c[1]) / (0.42 * shape[1])) ** 2 \
        + ((xx - c[2]) / (0.40 * shape[2])) ** 2 <= 1
    nii = work / "nii"
    nii.mkdir(parents=True, exist_ok=True)

    def write(arr, name):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 3.0))
        img.SetOrigin((-98.0, -134.0, -72.0))
        sitk.WriteImage(img, str(nii / name), useCompression=True)

    for k, ch in enumerate(("T2w", "FLAIR", "T1w")):
        arr = np.where(brain, rng.normal(0.2 * k, 1.0, shape), 0.0).astype(np.float32)
        write(arr, f"{ch}.nii.gz")
    write(brain.astype(np.uint8), "brain_mask.nii.gz")
    nshape = (shape[0], int(shape[1] * 1.1), int(shape[2] * 1.2))  # native FLAIR (z, y, x), 0.9 mm in-plane
    native = sitk.GetImageFromArray(np.zeros(nshape, np.float32))
    native.SetSpacing((0.9, 0.9, 3.0))
    native.SetOrigin((-105.0, -140.0, -72.0))
    sitk.WriteImage(native, str(nii / "native_FLAIR.nii.gz"), useCompression=True)
    sitk.WriteTransform(sitk.AffineTransform(3), str(nii / "from-FLAIR_to-MNI1x1x3_xfm.tfm"))

    # the training store: one stored visit with lesions (bench_loader's), and its window index
    from benchmarks.bench_loader import synthetic_visit, visit_windows

    model, _, _ = paper_sections(tiny)
    npy = work / "store" / "sub-bench_ses-w000.npy"
    npy.parent.mkdir(parents=True, exist_ok=True)
    synthetic_visit(npy, shape, 0)
    windows = visit_windows(npy, tuple(model["patch_size"]))
    windows["fold"] = 0
    windows.to_csv(work / "store" / "index.tsv", sep="\t", index=False)
    stored = np.load(npy, mmap_mode="r").shape
    emit(f"prep: grid {shape} (z, y, x), brain box stored {stored[:3]}, {len(windows)} lesion windows of "
         f"{tuple(model['patch_size'])}, {time.perf_counter() - t0:.1f} s")
    return {"grid": list(shape), "stored_box": list(stored[:3]), "lesion_windows": len(windows),
            "seconds": time.perf_counter() - t0}


def read_windows(work: Path):
    import pandas as pd

    return pd.read_csv(work / "store" / "index.tsv", sep="\t", dtype={"participant_id": str, "session": str})


# --------------------------------------------------------------------------- device info


def backend_info() -> dict:
    import keras

    info = {"backend": keras.backend.backend(), "keras": keras.__version__}
    try:
        if info["backend"] == "jax":
            import jax

            info["jax"] = jax.__version__
            info["devices"] = [str(d) for d in jax.devices()]
            info["device_kind"] = jax.devices()[0].device_kind
        elif info["backend"] == "torch":
            import torch

            info["torch"] = torch.__version__
            info["cuda"] = torch.version.cuda
            info["device_kind"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    except Exception as exc:  # noqa: BLE001
        info["device_error"] = f"{type(exc).__name__}: {exc}"
    emit(f"backend: {json.dumps(info)}")
    return info


def peak_memory_gib() -> float | None:
    try:
        import keras

        if keras.backend.backend() == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", 0) / 2**30
        if keras.backend.backend() == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.max_memory_allocated() / 2**30
    except Exception:  # noqa: BLE001
        return None
    return None


# --------------------------------------------------------------------------- part: infer


def save_fold_models(folder: Path, model_sec: dict, loss_sec: dict, training: dict) -> tuple[list[Path], dict]:
    """3 untrained fold models, compiled and saved as train_fold saves model.keras."""
    import keras

    from t2lesion.unet import losses as L
    from t2lesion.unet import model as M
    from t2lesion.unet.hparams import LossConfig, fold_seed, split_model_section
    from t2lesion.unet.train import gpu_visible

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"fold-{k}" / "model.keras" for k in range(FOLDS)]
    meta = folder / "models.json"
    if all(p.is_file() for p in paths) and meta.is_file():
        return paths, {**json.loads(meta.read_text()), "reused": True}
    t0 = time.perf_counter()
    policy = M.set_precision(training["mixed_precision"], gpu_visible())
    params = None
    for k, path in enumerate(paths):
        seed = fold_seed(SEED, k)
        keras.utils.set_random_seed(seed)
        kind, mcfg = split_model_section({**model_sec, "seed": seed})
        model = M.build_model(mcfg, kind)
        losses, _ = L.make_loss(LossConfig.from_dict(loss_sec), int(training["epochs"]), len(model.outputs),
                                model=model)
        model.compile(optimizer=keras.optimizers.Adam(float(training["learning_rate"])), loss=losses,
                      jit_compile="auto")
        model.optimizer.build(model.trainable_variables)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        params = M.count_params(model)
    keras.config.set_dtype_policy("float32")  # an inference job starts with Keras' default policy
    info = {"reused": False, "policy": policy, "params": params, "build_save_s": time.perf_counter() - t0,
            "bytes_each": paths[0].stat().st_size}
    meta.write_text(json.dumps(info))
    emit(f"fold models: {FOLDS} × {params:,} parameters, saved with policy {policy} "
         f"({info['bytes_each'] / 2**20:.1f} MiB each) in {info['build_save_s']:.1f} s")
    return paths, info


class _Capture:
    """A logging handler that echoes predict_visits' log lines and keeps the load time."""

    def __init__(self):
        import logging

        class H(logging.Handler):
            def emit(h, record):
                msg = record.getMessage()
                emit(f"  [log] {msg}")
                if "loaded in" in msg and record.args:
                    self.load_s = float(record.args[1])

        self.load_s = None
        self.handler = H()


def part_infer(work: Path, tiny: bool, n_visits: int) -> dict:
    import logging

    import numpy as np

    info = backend_info()
    from t2lesion.unet import infer as I

    model_sec, loss_sec, training = paper_sections(tiny)
    paths, build = save_fold_models(work / "models", model_sec, loss_sec, training)
    cfg = inference_cfg(tiny)
    backend = info["backend"]
    out = work / f"out-{backend}"
    out.mkdir(parents=True, exist_ok=True)
    nii = work / "nii"
    visits = []
    for k in range(n_visits):
        vid = f"sub-bench{k:02d}_ses-w000"
        v = {"id": vid, "brain_mask": str(nii / "brain_mask.nii.gz"),
             "native_flair": str(nii / "native_FLAIR.nii.gz"),
             "flair_xfm": str(nii / "from-FLAIR_to-MNI1x1x3_xfm.tfm"),
             "out_native_mask": str(out / f"{vid}_space-FLAIR_desc-lesion_mask.nii.gz")}
        for ch in ("T2w", "FLAIR", "T1w"):
            v[ch] = str(nii / f"{ch}.nii.gz")
        for name in I.MAPS:
            v[f"out_{name}"] = str(out / f"{vid}_{name}.nii.gz")
        visits.append(v)
    cap = _Capture()
    lg = logging.getLogger(f"bench.infer.{backend}")
    lg.setLevel(logging.INFO)
    lg.addHandler(cap.handler)
    lg.propagate = False
    emit(f"predict_visits: {n_visits} visits, {FOLDS} folds, cfg {cfg}")
    t0 = time.perf_counter()
    recs = I.predict_visits(visits, [str(p) for p in paths], cfg, SEED, lg)
    call_s = time.perf_counter() - t0
    steady = recs[1:]

    def med(key):
        return float(np.median([r[key] for r in steady])) if steady else None

    res = {**info, "models": build, "cfg": cfg, "load_s": cap.load_s, "call_s": call_s, "visits": recs,
           "first_visit_s": recs[0]["total_s"], "first_predict_s": recs[0]["predict_s"],
           "steady_predict_s": med("predict_s"), "steady_total_s": med("total_s"), "steady_read_s": med("read_s"),
           "steady_write_s": med("write_s"), "windows": recs[0]["windows"], "peak_gib": peak_memory_gib()}
    emit(f"| visit | windows | read s | predict s | write s | total s |  ({backend})")
    emit("|---|---:|---:|---:|---:|---:|")
    for i, r in enumerate(recs):
        tag = " (first: compiles)" if i == 0 else ""
        emit(f"| {i + 1}{tag} | {r['windows']} | {r['read_s']:.2f} | {r['predict_s']:.2f} | {r['write_s']:.2f} "
             f"| {r['total_s']:.2f} |")
    return res


# --------------------------------------------------------------------------- part: train


def part_train(work: Path, tiny: bool, steps: int) -> dict:
    import numpy as np

    info = backend_info()
    from t2lesion.unet import model as M
    from t2lesion.unet.hparams import LossConfig, fold_seed, split_model_section
    from t2lesion.unet.data import PatchDataset
    from t2lesion.unet.train import gpu_visible, jit_setting, new_compiled_model

    model_sec, loss_sec, training = paper_sections(tiny)
    seed = fold_seed(SEED, 0)
    # the model train_fold starts a fold with
    gpu = gpu_visible()
    policy = M.set_precision(training["mixed_precision"], gpu)
    jit = jit_setting(gpu)
    t0 = time.perf_counter()
    kind, mcfg = split_model_section({**model_sec, "seed": seed})
    model = new_compiled_model(kind, mcfg, LossConfig.from_dict(loss_sec), int(training["epochs"]),
                               float(training["learning_rate"]), seed, jit)
    build_s = time.perf_counter() - t0
    bs = int(training["batch_size"])
    ds = PatchDataset(read_windows(work), tuple(model_sec["patch_size"]), batch_size=bs,
                      augment_fraction=float(training["augment_fraction"]), seed=seed, steps=4)
    batches = [ds[i] for i in range(3)]
    emit(f"train: {kind}, {M.count_params(model):,} parameters, policy {policy}, jit {jit}, batch {bs} of "
         f"{tuple(model_sec['patch_size'])}, built in {build_s:.1f} s")
    t0 = time.perf_counter()
    logs = model.train_on_batch(batches[0][0], batches[0][1], return_dict=True)
    first = time.perf_counter() - t0
    emit(f"  first step (compiling): {first:.1f} s, loss {logs.get('loss')}")
    times = []
    for i in range(steps):
        x, y = batches[(i + 1) % len(batches)]
        t0 = time.perf_counter()
        logs = model.train_on_batch(x, y, return_dict=True)  # returns host floats: synchronised
        times.append(time.perf_counter() - t0)
    loss = float(logs.get("loss", float("nan")))
    med = float(np.median(times))
    res = {**info, "policy": policy, "jit": str(jit), "params": M.count_params(model), "batch": bs,
           "patch": list(model_sec["patch_size"]), "build_s": build_s, "first_step_s": first, "steps": steps,
           "step_median_s": med, "step_mean_s": float(np.mean(times)), "step_min_s": float(np.min(times)),
           "step_max_s": float(np.max(times)), "last_loss": loss, "peak_gib": peak_memory_gib()}
    emit(f"  {steps} steps: median {med * 1000:.0f} ms, mean {res['step_mean_s'] * 1000:.0f} ms, "
         f"min {res['step_min_s'] * 1000:.0f} ms, max {res['step_max_s'] * 1000:.0f} ms; "
         f"{bs / med:.0f} patches/s consumed; loss {loss:.4f}")
    return res


def part_trainfold(work: Path, tiny: bool, steps: int) -> dict:
    import logging

    info = backend_info()
    from t2lesion.unet.hparams import fold_seed
    from t2lesion.unet.data import PatchDataset
    from t2lesion.unet.train import train_fold

    model_sec, loss_sec, training = paper_sections(tiny)
    seed = fold_seed(SEED, 0)
    windows = read_windows(work)
    patch = tuple(model_sec["patch_size"])
    bs = int(training["batch_size"])
    workers = int(training["workers"])
    loader = training.get("loader", "threads")  # configs/paper.yaml: processes
    trn = PatchDataset(windows, patch, batch_size=bs, augment_fraction=float(training["augment_fraction"]),
                       seed=seed, shuffle=True, steps=steps, workers=max(1, workers),
                       use_multiprocessing=loader == "processes")
    trn.shm_dir = shared_memory_dir(trn, work) if trn.processes else trn.shm_dir
    val = PatchDataset(windows.iloc[:bs].reset_index(drop=True), patch, batch_size=bs, augment_fraction=0.0,
                       seed=seed, shuffle=False)
    lg = logging.getLogger("bench.trainfold")
    lg.setLevel(logging.INFO)
    cap = _Capture()
    lg.addHandler(cap.handler)
    lg.propagate = False
    tr = {"epochs": 2, "steps_per_epoch": steps, "learning_rate": float(training["learning_rate"]),
          "mixed_precision": training["mixed_precision"]}
    t0 = time.perf_counter()
    try:
        summary = train_fold(trn, val, work / "trainfold", model_sec, loss_sec, tr, seed, log=lg)
    finally:
        trn.close()
    total = time.perf_counter() - t0
    rows = [{k: r[k] for k in ("epoch", "seconds", "iterations", "loss")} for r in summary["history"]]
    for r in rows:
        emit(f"  epoch {r['epoch']}: {r['seconds']:.1f} s for {steps} steps + validation ({bs} windows) + "
             f"checkpoints")
    return {**info, "steps_per_epoch": steps, "workers": workers, "loader": loader, "batch": bs, "epochs": rows,
            "total_s": total,
            "precision": summary.get("precision")}


# --------------------------------------------------------------------------- part: loader


def shared_memory_dir(ds, work: Path) -> str:
    """Where ``ds``'s worker processes hand batches over: /dev/shm if it has room for a batch
    per process (a container's default is 64 MiB), else a folder of the work directory (on
    disk, through the page cache), said in a line."""
    from t2lesion.unet.batches import SHARED_MEMORY_DIR, shared_memory_bytes

    need = shared_memory_bytes(ds.batch_shapes, ds.processes)
    free = shutil.disk_usage(SHARED_MEMORY_DIR).free if os.path.isdir(SHARED_MEMORY_DIR) else 0
    if free >= need:
        return SHARED_MEMORY_DIR
    folder = work / "shm"
    folder.mkdir(exist_ok=True)
    emit(f"  ({SHARED_MEMORY_DIR} has {free / 2**20:.0f} MiB free, {need / 2**20:.0f} MiB needed: the worker "
         f"processes hand batches over in {folder} instead)")
    return str(folder)


_DS = None


def _get(i):
    x, ys = _DS[i]
    return x.shape[0], len(ys)


def _get_full(i):
    return _DS[i]


def part_loader(work: Path, tiny: bool, n_single: int, pools: list[tuple[str, int, float]]) -> dict:
    import multiprocessing as mp
    from concurrent.futures import ThreadPoolExecutor

    from t2lesion.unet.data import PatchDataset

    global _DS
    model_sec = paper_sections(tiny)[0]
    patch = tuple(model_sec["patch_size"])
    bs = 10
    windows = read_windows(work)
    emit(f"loader: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, batch {bs} of {patch}, "
         f"{len(windows)} windows")
    emit("| workers | kind | augmented share | batches | patches/s | ms/patch (wall) |")
    emit("|---:|---|---:|---:|---:|---:|")
    rows = []
    for frac in (0.0, 0.5, 1.0):
        ds = PatchDataset(windows, patch, batch_size=bs, augment_fraction=frac, seed=0, steps=10_000)
        ds[0]
        t0 = time.perf_counter()
        for i in range(1, n_single + 1):
            ds[i]
        wall = time.perf_counter() - t0
        n = bs * n_single
        rows.append({"workers": 1, "kind": "main thread", "frac": frac, "batches": n_single, "patches_s": n / wall})
        emit(f"| 1 | main thread | {frac} | {n_single} | {n / wall:.1f} | {1000 * wall / n:.1f} |")
    for kind, workers, frac in pools:
        _DS = PatchDataset(windows, patch, batch_size=bs, augment_fraction=frac, seed=0, steps=10_000)
        nb = max(12, 2 * workers)
        if kind == "threads":
            with ThreadPoolExecutor(workers) as ex:
                list(ex.map(_get, range(workers)))  # warm: open the memory map
                t0 = time.perf_counter()
                list(ex.map(_get_full, range(workers, workers + nb)))
                wall = time.perf_counter() - t0
        elif kind == "shared memory":  # training.loader: processes
            ds = PatchDataset(windows, patch, batch_size=bs, augment_fraction=frac, seed=0, steps=10_000,
                              workers=workers, use_multiprocessing=True)
            ds.shm_dir = shared_memory_dir(ds, work)
            try:
                with ThreadPoolExecutor(ds.workers) as ex:
                    list(ex.map(lambda i: ds[i][0].shape, range(ds.workers)))  # warm: start the workers
                    t0 = time.perf_counter()
                    list(ex.map(lambda i: ds[i][0].shape, range(ds.workers, ds.workers + nb)))
                    wall = time.perf_counter() - t0
            finally:
                ds.close()
        else:
            with mp.get_context("fork").Pool(workers) as pool:
                pool.map(_get, range(workers), chunksize=1)  # warm: each worker opens the map
                t0 = time.perf_counter()
                for _ in pool.imap(_get_full, range(workers, workers + nb), chunksize=1):
                    pass  # batches come back through the pipe, as Keras' process workers send them
                wall = time.perf_counter() - t0
        n = bs * nb
        rows.append({"workers": workers, "kind": kind, "frac": frac, "batches": nb, "patches_s": n / wall})
        emit(f"| {workers} | {kind} | {frac} | {nb} | {n / wall:.1f} | {1000 * wall / n:.1f} |")
    return {"cpus": os.cpu_count(), "patch": list(patch), "batch": bs, "rows": rows}


# --------------------------------------------------------------------------- part: torchpeer


def part_torchpeer(work: Path, tiny: bool, steps: int) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE.parent))
    import torch_unet as TU

    from t2lesion.unet.hparams import split_model_section

    model_sec, _, training = paper_sections(tiny)
    _, mcfg = split_model_section({**model_sec, "seed": SEED})
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    model = TU.MultiArmUNet(mcfg).to(dev)
    params = TU.count_parameters(model)[0]
    bs, patch = int(training["batch_size"]), tuple(model_sec["patch_size"])
    x = torch.randn(bs, 3, *patch, device=dev)
    y = (torch.rand(bs, 1, *patch, device=dev) > 0.97).float()
    opt = torch.optim.Adam(model.parameters(), float(training["learning_rate"]))

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(**amp):
            p = model(x)[0]
        loss = torch.nn.functional.binary_cross_entropy(p.float(), y)
        loss.backward()
        opt.step()
        return float(loss.detach())  # host float: synchronised

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    emit(f"torchpeer: torch {torch.__version__} on {dev}, {params:,} parameters, batch {bs} of {patch}: first step "
         f"{first:.2f} s, {steps} steps median {med * 1000:.0f} ms ({bs / med:.0f} patches/s)")
    xi = torch.randn(2 if tiny else 8, 3, *patch, device=dev)
    mc = 2 if tiny else 10
    with torch.autocast(**amp):
        model.mc_moments(xi, mc).float().cpu()
        inf = []
        for _ in range(3):
            t0 = time.perf_counter()
            model.mc_moments(xi, mc).float().cpu()
            inf.append(time.perf_counter() - t0)
    emit(f"  MC inference: {len(xi)} windows × {mc} passes, median {np.median(inf):.3f} s per batch")
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
    return {"backend": "torch (no Keras)", "device": str(dev), "params": params, "batch": bs, "patch": list(patch),
            "first_step_s": first, "step_median_s": med, "steps": steps, "mc_windows": len(xi), "mc": mc,
            "mc_batch_s": float(np.median(inf)), "peak_gib": peak}


# --------------------------------------------------------------------------- the driver


def child(args) -> int:
    work = Path(args.work)
    t0 = time.perf_counter()
    if os.environ.get("KERAS_BACKEND") == "jax" and args.part != "loader" and args.compile_cache == "on":
        # as every pipeline job starts (backend.start_job): one persistent compilation cache,
        # shared by the run's JAX parts, as dl.compile_cache shares it between jobs
        from t2lesion.unet.backend import compile_cache

        compile_cache(work / "jax_cache", "jax", _EmitLog())
    if args.part == "prep":
        res = part_prep(work, args.tiny)
    elif args.part in ("infer", "infer_cached"):
        res = part_infer(work, args.tiny, args.visits)
    elif args.part == "train":
        res = part_train(work, args.tiny, args.steps)
    elif args.part == "trainfold":
        res = part_trainfold(work, args.tiny, 3 if args.tiny else 10)
    elif args.part == "torchpeer":
        res = part_torchpeer(work, args.tiny, 3 if args.tiny else args.steps)
    elif args.part == "loader":
        n = 2 if args.tiny else 6
        pools = [("threads", 2, 0.5), ("processes", 2, 0.5), ("shared memory", 2, 0.5)] if args.tiny else \
            [("threads", 4, 0.5), ("threads", 16, 0.5), ("processes", 16, 0.5), ("shared memory", 4, 0.5),
             ("shared memory", 16, 0.5), ("shared memory", 16, 1.0)]
        res = part_loader(work, args.tiny, n, pools)
    else:
        raise SystemExit(f"unknown part {args.part}")
    res["part_s"] = time.perf_counter() - t0
    name = f"{args.part}-{os.environ.get('KERAS_BACKEND', 'none')}.json"
    (work / "results").mkdir(exist_ok=True)
    (work / "results" / name).write_text(json.dumps(res, indent=1, default=str))
    return 0


class _EmitLog:
    """A stand-in logger for :func:`t2lesion.unet.backend.compile_cache`: its line, printed."""

    def info(self, msg, *args):
        emit(f"  [log] {msg % args}")


def run_part(cmd: list[str], env: dict, timeout: float, sink) -> tuple[int | None, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, bufsize=1)

    def pump():
        for line in proc.stdout:
            sink(line.rstrip("\n"))

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    th.join(timeout=5)
    return rc, time.perf_counter() - t0


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("keras", "jax", "jaxlib", "jax-cuda13-plugin", "torch", "numpy", "scipy", "SimpleITK",
                 "optree", "ml-dtypes", "h5py"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def gpu_name() -> str:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "no nvidia-smi"
    try:
        return subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              check=False, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed: {exc}"


def summary(results: dict, emit_) -> None:
    emit_("")
    emit_("## Summary (Markdown)")
    inf = {k.split("-", 1)[1]: v for k, v in results.items() if k.startswith("infer-")}
    if inf:
        emit_("| backend | device | saved policy | windows/visit | load 3 folds s | first visit s (predict) "
              "| steady predict s/visit | steady total s/visit (read, write) | visits | peak GPU GiB |")
        emit_("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for b, r in inf.items():
            pol = r["models"].get("policy", "(reused)")
            emit_(f"| {b} | {r.get('device_kind')} | {pol} | {r['windows']} | {r['load_s']:.2f} | "
                  f"{r['first_visit_s']:.1f} ({r['first_predict_s']:.1f}) | {r['steady_predict_s']:.2f} | "
                  f"{r['steady_total_s']:.2f} ({r['steady_read_s']:.2f}, {r['steady_write_s']:.2f}) | "
                  f"1 + {len(r['visits']) - 1} | {_fmt(r.get('peak_gib'))} |")
    again, cold = results.get("infer_cached-jax"), results.get("infer-jax")
    if again and cold:
        emit_("| JAX inference job | load 3 folds s | first visit s (predict) | steady predict s/visit |")
        emit_("|---|---:|---:|---:|")
        for label, r in (("first, empty compilation cache", cold), ("second, same models and cache", again)):
            emit_(f"| {label} | {r['load_s']:.2f} | {r['first_visit_s']:.1f} ({r['first_predict_s']:.1f}) | "
                  f"{r['steady_predict_s']:.2f} |")
    for k, r in results.items():
        if k.startswith("train-"):
            emit_("| backend | policy | batch | first step s | steady s/step (median; min–max) | patches/s |")
            emit_("|---|---|---:|---:|---:|---:|")
            emit_(f"| {r['backend']} | {r['policy']} | {r['batch']} × {'×'.join(map(str, r['patch']))} | "
                  f"{r['first_step_s']:.1f} | {r['step_median_s']:.3f} ({r['step_min_s']:.3f}–{r['step_max_s']:.3f}, "
                  f"{r['steps']} steps) | {r['batch'] / r['step_median_s']:.0f} |")
        if k.startswith("torchpeer-"):
            emit_(f"torch peer (no Keras, {r['device']}): {r['params']:,} parameters, batch {r['batch']}: "
                  f"{r['step_median_s']:.3f} s/step; MC {r['mc_windows']} windows × {r['mc']}: {r['mc_batch_s']:.3f} s")
        if k.startswith("trainfold-"):
            ep = ", ".join(f"epoch {e['epoch']} {e['seconds']:.1f} s" for e in r["epochs"])
            emit_(f"train_fold: {r['steps_per_epoch']} steps/epoch, {r['workers']} loader "
                  f"{r.get('loader', 'threads')}: {ep}")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench_gpu_out")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for all parts together")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke-test sizes")
    ap.add_argument("--backends", default="jax,torch", help="inference backends in order; training uses the first")
    ap.add_argument("--parts", default="prep,infer,infer_cached,train,torchpeer,loader,trainfold,infer2")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--cap-scale", type=float, default=1.0,
                    help="multiply each part's time cap (sized for a GPU machine): 10 for a --tiny JAX smoke "
                         "test on a CPU")
    ap.add_argument("--compile-cache", choices=("on", "off"), default="on",
                    help="the JAX parts' shared persistent compilation cache (on: as the pipeline's jobs run)")
    ap.add_argument("--visits", type=int, default=4)
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args(argv)
    if args.part:
        return child(args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "bench_gpu.log", "a")  # noqa: SIM115 - written by sink() until the end of main
    lock = threading.Lock()

    def sink(line: str) -> None:
        with lock:
            print(line, flush=True)
            logf.write(line + "\n")
            logf.flush()

    t_start = time.perf_counter()
    deadline = t_start + args.budget
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    header = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "cpus": os.cpu_count(),
              "gpu": gpu_name(), "versions": versions(), "tiny": args.tiny, "work": str(work),
              "dev_shm_free_mib": (round(shutil.disk_usage("/dev/shm").free / 2**20)
                                   if os.path.isdir("/dev/shm") else None)}
    sink(f"# bench_gpu {json.dumps(header)}")
    sink(f"command: {' '.join([sys.executable] + sys.argv)}")
    # part -> (backend, cap seconds, minimum seconds to start it)
    plan = {
        "prep": ("numpy", 60, 10),
        "infer": (backends[0] if backends else "jax", 170, 40),
        "infer_cached": ("jax" if "jax" in backends else None, 120, 40),
        "train": (backends[0] if backends else "jax", 190, 60),
        "loader": ("numpy", 75, 20),
        "infer2": (backends[1] if len(backends) > 1 else None, 90, 40),
        "trainfold": (backends[0] if backends else "jax", 150, 100),
        "torchpeer": ("torch", 120, 30),
    }
    status = {}
    for name in [p.strip() for p in args.parts.split(",") if p.strip()]:
        backend, cap, need = plan[name]
        cap, need = cap * args.cap_scale, need * args.cap_scale
        if backend is None:
            continue
        left = deadline - time.perf_counter()
        if left < need:
            sink(f"## part {name} ({backend}): SKIPPED, {left:.0f} s of the budget left (needs {need})")
            status[name] = "skipped"
            continue
        part = "infer" if name == "infer2" else name
        if name == "infer_cached" and status.get("infer") != "ok":
            sink("## part infer_cached: SKIPPED, part infer did not finish (it saves the models and fills the cache)")
            status[name] = "skipped"
            continue
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONUNBUFFERED="1")
        if backend == "numpy":  # CPU-only parts: Keras' NumPy backend (it imports JAX: keep JAX off the GPU)
            env.update(JAX_PLATFORMS="cpu")
            env.setdefault("OMP_NUM_THREADS", "1")
            if importlib.util.find_spec("jax") is None:
                env["KERAS_BACKEND"] = "torch"
        visits = {"infer2": max(4, args.visits - 1), "infer_cached": 2}.get(name, args.visits)
        cmd = [sys.executable, str(HERE), "--part", part, "--work", str(work), "--visits", str(visits),
               "--steps", str(args.steps), "--compile-cache", args.compile_cache] + (["--tiny"] if args.tiny else [])
        sink(f"## part {name} ({backend}), at most {min(cap, left):.0f} s")
        rc, secs = run_part(cmd, env, min(cap, left), sink)
        state = "ok" if rc == 0 else ("TIMED OUT" if rc is None else f"FAILED rc={rc}")
        status[name] = state
        sink(f"## part {name} ({backend}): {state} in {secs:.1f} s")
        if name == "prep" and rc != 0:
            sink("## prep failed: the other parts need its files; stopping")
            break
    results = {}
    for f in sorted((work / "results").glob("*.json")) if (work / "results").is_dir() else []:
        results[f.stem] = json.loads(f.read_text())
    try:
        summary(results, sink)
    except Exception as exc:  # noqa: BLE001 - the raw results are still written below
        sink(f"(summary failed: {type(exc).__name__}: {exc})")
    sink(f"parts: {json.dumps(status)}; total {time.perf_counter() - t_start:.1f} s")
    (out / "bench_gpu.json").write_text(json.dumps({"header": header, "status": status, "results": results},
                                                   indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
