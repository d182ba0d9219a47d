"""Micro benchmark of ensembled MC-dropout inference (t2lesion.unet.infer), one visit.

Compares, in one run on the same machine and the same windows, per fold and visit:

* ``cached``: the encoder once per window batch, the MC decoder on the n-fold repeated
  features (``FoldPredictor``, what ``predict_visit`` uses);
* ``naive``: the whole model (encoder included) on the n-fold repeated windows
  (``FoldPredictor(cache_encoder=False)``; the same dropout draws, so the same maps);
* ``loop``: n separate calls of the whole MC model per window batch (one pass each);
* ``padded``: ``cached`` with every batch filled up to ``--batch`` with empty windows, as
  ``sliding_window_moments`` did before it split the remainder into power-of-two batches
  (``windows.window_batches``; the cost of the old last batch, other dropout draws).

and reports seconds per visit (steady state, after one warm-up visit that compiles the
graphs; reading/writing NIfTI not included), windows per second and the ratios. Default: a
tiny-width multi-arm model on CPU. Run standalone:

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_infer.py [--mc 10] [--folds 1] \
        [--widths 8 16 32 64] [--patch 16 48 48] [--shape 40 120 100] [--batch 4] [--json out.json]

The paper's window on the MNI grid (12 windows a visit; 8 + 4 against 8 + 8 padded):

    ... bench_infer.py --patch 32 96 96 --shape 63 233 197 --batch 8 --kinds cached padded
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import t2lesion  # noqa: E402,F401  (TensorFlow CPU defaults, before Keras)
import keras  # noqa: E402

from t2lesion.unet import infer as I  # noqa: E402
from t2lesion.unet import model as M  # noqa: E402


class LoopPredictor(I.FoldPredictor):
    """n whole-model passes per window batch, one ``predict_on_batch`` each."""

    def __init__(self, model, mc_samples: int):
        super().__init__(model, mc_samples)  # builds the MC decoder (shares the weights)
        enc = model.get_layer("encoder")
        x = keras.Input(shape=tuple(enc.input.shape[1:]))
        self.full = keras.Model(x, self.mc_decoder(enc(x))[0], name="full_mc")

    def moments(self, x, seed):
        acc = None
        for s in range(self.mc_samples):
            M.set_mc_seed(self.mc_decoder, I.derive_seed(seed, s))
            p = np.asarray(self.full.predict_on_batch(x), np.float32)[..., 0]
            m = I.moments_of(p)
            acc = m if acc is None else acc + m
        return acc / np.float32(self.mc_samples)


class PaddedPredictor(I.FoldPredictor):
    """``cached``, each call filled up to ``batch`` windows with zeros (the old last batch)."""

    def __init__(self, model, mc_samples: int, batch: int):
        super().__init__(model, mc_samples)
        self.batch = int(batch)

    def moments(self, x, seed):
        n = len(x)
        if n < self.batch:
            x = np.concatenate([x, np.zeros((self.batch - n,) + x.shape[1:], x.dtype)])
        return super().moments(x, seed)[:n]


def make_visit(shape, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 1, size=tuple(shape) + (3,)).astype(np.float32)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    brain = zz**2 / 0.9 + yy**2 / 0.8 + xx**2 / 0.7 <= 1.0
    img[~brain] = 0.0
    return img, brain


def run(args) -> dict:
    cfg = M.ModelConfig.from_dict({"patch_size": tuple(args.patch), "widths": tuple(args.widths), "seed": 1})
    t0 = time.perf_counter()
    models = [M.build_multiarm_unet(M.with_overrides(cfg, seed=1 + k)) for k in range(args.folds)]
    build_s = time.perf_counter() - t0
    img, brain = make_visit(args.shape)
    kinds = {
        "cached": lambda m: I.FoldPredictor(m, args.mc),
        "naive": lambda m: I.FoldPredictor(m, args.mc, cache_encoder=False),
        "loop": lambda m: LoopPredictor(m, args.mc),
        "padded": lambda m: PaddedPredictor(m, args.mc, args.batch),
    }
    common = dict(overlap=args.overlap, blending="gaussian", mc_samples=args.mc, batch_size=args.batch, seed=0)
    rep = {
        "backend": keras.backend.backend(), "keras": keras.__version__, "machine": platform.processor() or
        platform.machine(), "cpus": os.cpu_count(), "mc_samples": args.mc, "folds": args.folds,
        "widths": list(args.widths), "patch": list(args.patch), "shape": list(args.shape), "batch": args.batch,
        "overlap": args.overlap, "params": M.count_params(models[0]), "build_s": build_s, "kinds": {},
    }
    maps = {}
    for kind in args.kinds:
        preds = [kinds[kind](m) for m in models]
        st: dict = {}
        t0 = time.perf_counter()
        I.predict_visit(preds, img, brain, stats=st, **common)  # warm-up: traces/compiles the graphs
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            maps[kind] = I.predict_visit(preds, img, brain, **common)
            times.append(time.perf_counter() - t0)
        s = float(np.median(times))
        rep["windows"], rep["batches"] = st["windows"], st["batches"]
        rep["kinds"][kind] = {"s_per_visit": s, "first_visit_s": first,
                              "windows_per_s": st["windows"] / s}
        print(f"{kind:7s} {s:8.2f} s/visit  {st['windows'] / s:7.2f} windows/s  "
              f"(first visit, compiling: {first:.1f} s)", flush=True)
    k = rep["kinds"]
    if "cached" in k:
        for other in ("naive", "loop", "padded"):
            if other in k:
                rep[f"ratio_{other}_over_cached"] = k[other]["s_per_visit"] / k["cached"]["s_per_visit"]
                print(f"{other}/cached = {rep[f'ratio_{other}_over_cached']:.2f}x")
    if "cached" in maps and "naive" in maps:
        rep["cached_vs_naive_max_abs_diff_prob"] = float(np.abs(maps["cached"]["prob"] - maps["naive"]["prob"]).max())
    return rep


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mc", type=int, default=10)
    ap.add_argument("--folds", type=int, default=1)
    ap.add_argument("--widths", type=int, nargs=4, default=[8, 16, 32, 64])
    ap.add_argument("--patch", type=int, nargs=3, default=[16, 48, 48])
    ap.add_argument("--shape", type=int, nargs=3, default=[40, 120, 100])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--overlap", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--kinds", nargs="+", default=["cached", "naive", "loop"], choices=["cached", "naive", "loop", "padded"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rep = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=2))
    print(json.dumps(rep, indent=2))


if __name__ == "__main__":
    main()
