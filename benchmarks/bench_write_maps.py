"""Writing one visit's inference maps (t2lesion.unet.infer.predict_visits): gzip level against
time and size.

The inference job writes, per visit, the five maps of ``t2lesion.unet.infer.MAPS`` on the MNI
1×1×3 mm grid as ``.nii.gz`` (prob, sd, entropy, mi float32; mask uint8) through
``t2lesion.io.write_array``. This script builds maps like a real visit's: the grid of the
GPU inference benchmark (63×233×197), zero outside a brain-sized ellipsoid, inside it the
maps :func:`t2lesion.unet.infer.derive_maps` gives for the mean of ``--mc`` noisy MC passes of a
smooth probability field with a few lesions (so the float maps have the noisy low bits that
make them compress as real ones do); then writes all five, ``--repeat`` times, with the
pipeline's writer (``itk``: ``infer.write_maps``, ITK's own gzip, which ignores SimpleITK's
``compressionLevel`` in 2.5.7) and with Python's zlib at each level (0 = stored, 1 = fastest
... 9 = smallest) after ITK's plain write, one map after another; then the pipeline's writer on
``--threads`` threads (one map per thread); and reports the median seconds per visit, CPU
seconds and megabytes.

    .venv/bin/python benchmarks/bench_write_maps.py [--shape 63 233 197] [--repeat 3] [--threads 1 2 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import SimpleITK as sitk  # noqa: E402

from t2lesion.unet import infer as I  # noqa: E402


def visit_maps(shape, mc: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = shape
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    inside = (zz / 0.9) ** 2 + (yy / 0.84) ** 2 + (xx / 0.8) ** 2 <= 1.0
    from scipy.ndimage import gaussian_filter

    logit = gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), (1, 4, 4)) * 20 - 6
    for _ in range(12):  # lesions
        c = rng.uniform(0.2, 0.8, 3) * np.array(shape)
        r = rng.uniform(1.5, 4.0)
        logit[((np.indices(shape).T - c).T ** 2 / np.array([1 / 9, 1, 1])[:, None, None, None]).sum(0) < r * r] += 10
    p = np.zeros(shape + (mc,), np.float32)
    for k in range(mc):
        p[..., k] = 1 / (1 + np.exp(-(logit + rng.normal(0, 1.0, shape).astype(np.float32))))
    moments = np.stack([p.mean(-1), (p * p).mean(-1), I.binary_entropy(p).mean(-1)], axis=-1)
    maps = I.derive_maps(moments, inside, "mixture")
    maps["mask"] = (maps["prob"] >= 0.5).astype(np.uint8)
    return maps


def write_zlib(img: sitk.Image, path: Path, level: int) -> None:
    """ITK writes the plain .nii, Python's zlib gzips it at ``level`` (ITK's NIfTI writer
    ignores SimpleITK's ``compressionLevel``: every level gives the same bytes)."""
    plain = path.with_name(path.name[:-3])
    sitk.WriteImage(img, str(plain), useCompression=False)
    path.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=level, mtime=0))
    plain.unlink()


def write_all(maps, ref, folder: Path, level, threads: int = 1) -> tuple[float, int]:
    """All five maps: ``level`` None = the pipeline's writer (``infer.write_maps``, ITK's gzip)
    on ``threads`` threads; a number = :func:`write_zlib` at that level, one after another."""
    visit = {f"out_{name}": str(folder / f"{name}.nii.gz") for name in I.MAPS}
    t0 = time.perf_counter()
    if level is None:
        I.write_maps(maps, ref, visit, threads)
    else:
        for name in I.MAPS:
            img = sitk.GetImageFromArray(maps[name])
            img.CopyInformation(ref)
            write_zlib(img, Path(visit[f"out_{name}"]), level)
    elapsed = time.perf_counter() - t0
    return elapsed, sum(Path(p).stat().st_size for p in visit.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(63, 233, 197), help="z y x of the MNI grid")
    ap.add_argument("--mc", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--levels", nargs="+", default=["itk", "0", "1", "2", "3", "6", "9"],
                    help="itk = the pipeline's writer; N = zlib level N")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4], help="write_maps threads, ITK's gzip")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    maps = visit_maps(tuple(a.shape), a.mc)
    ref = sitk.Image([int(v) for v in reversed(a.shape)], sitk.sitkUInt8)
    ref.SetSpacing((1.0, 1.0, 3.0))
    raw = sum(m.nbytes for m in maps.values())
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, SimpleITK {sitk.Version_VersionString()},"
          f" grid {tuple(a.shape)}, {len(maps)} maps, {raw / 1e6:.1f} MB raw")
    print("| gzip | threads | s per visit (median) | CPU-s | MB per visit | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(lv, 1) for lv in a.levels] + [("itk", n) for n in a.threads if n != 1]
        for lv, threads in runs:
            level = None if lv == "itk" else int(lv)
            walls, cpus = [], []
            for _ in range(a.repeat):
                c0 = time.process_time()
                wall, size = write_all(maps, ref, Path(tmp), level, threads)
                cpus.append(time.process_time() - c0)
                walls.append(wall)
            row = {"gzip": lv, "threads": threads, "wall_s": statistics.median(walls),
                   "cpu_s": statistics.median(cpus), "mb": size / 1e6, "ratio": raw / size}
            rows.append(row)
            print(f"| {'ITK' if lv == 'itk' else 'zlib ' + lv} | {threads} | {row['wall_s']:.3f} | {row['cpu_s']:.3f} "
                  f"| {row['mb']:.2f} | {row['ratio']:.1f} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"shape": a.shape, "rows": rows, "load": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
