"""One demo training step per backend and precision, on one CPU thread (docs/model.md, "The
demo's recipe": the bf16 and JAX levers).

The demo's model (config.yaml: multi-arm, 16×48×48 windows, widths 8–64, heads at a 1 %
prior, α ≡ β ≡ 1) compiled as a fold's job compiles it (``train.new_compiled_model``: Adam,
the loss of Eq. 1–2, deep supervision), one batch of 10 random windows with 2 % lesion
voxels. Reported per precision: the first step (tracing/compiling included), the median of
``--steps`` further steps, and whether every weight is still finite. The precisions
alternate (fp32, bf16, fp32, bf16, ...) in one process, so a ratio survives a shared machine.

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_train_step.py [--precision off on] [--rounds 2]
    TF_ENABLE_ONEDNN_OPTS=0 KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_train_step.py
    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_train_step.py --precision off --rounds 1

One thread: TensorFlow's intra/inter-op pools and XLA's CPU client are limited to it.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import t2lesion  # noqa: E402,F401  (TensorFlow CPU defaults, oneDNN on, before Keras imports it)
import keras  # noqa: E402
import numpy as np  # noqa: E402

from t2lesion.unet import losses as L  # noqa: E402
from t2lesion.unet import model as M  # noqa: E402
from t2lesion.unet import train as T  # noqa: E402
from t2lesion.unet.hparams import LossConfig, split_model_section  # noqa: E402

DEMO_MODEL = {"patch_size": [16, 48, 48], "widths": [8, 16, 32, 64], "bn_momentum": 0.9, "output_prior": 0.01}
DEMO_LOSS = {"alpha_max": 1.0, "beta_min": 1.0}


def one_thread() -> None:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def time_steps(precision: str, steps: int, batch: int, seed: int = 0) -> dict:
    policy = M.set_precision(precision, gpu=False)
    kind, mcfg = split_model_section({**DEMO_MODEL, "seed": 1})
    model = T.new_compiled_model(kind, mcfg, LossConfig.from_dict(DEMO_LOSS), 4, 3e-3, 1, T.jit_setting(False))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *DEMO_MODEL["patch_size"], 3)).astype("float32")
    t = L.pack_targets((rng.random((batch, *DEMO_MODEL["patch_size"])) < 0.02).astype("float32"))
    targets = [t] * len(model.outputs)
    t0 = time.perf_counter()
    model.train_on_batch(x, targets)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, targets)
        times.append(time.perf_counter() - t0)
    finite = all(bool(np.isfinite(keras.ops.convert_to_numpy(w)).all()) for w in model.weights)
    return {"policy": policy, "first_s": first, "step_s": float(np.median(times)), "finite": finite}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", nargs="+", default=["off", "on"], choices=["off", "on"],
                    help="training.mixed_precision values to alternate (off = fp32, on = bf16)")
    ap.add_argument("--rounds", type=int, default=2, help="times each precision is measured")
    ap.add_argument("--steps", type=int, default=5, help="steps timed after the first")
    ap.add_argument("--batch", type=int, default=10)
    args = ap.parse_args(argv)
    one_thread()
    print(f"# {platform.processor() or platform.machine()}, Keras {keras.__version__} on {keras.backend.backend()}, "
          f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(unset)')}, batch {args.batch}")
    print("precision\tfirst_step_s\tmedian_step_s\tweights_finite")
    for _ in range(args.rounds):
        for p in args.precision:
            r = time_steps(p, args.steps, args.batch)
            print(f"{r['policy']}\t{r['first_s']:.1f}\t{r['step_s']:.2f}\t{r['finite']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
