"""Does a demo-sized training predict sensibly in inference mode? BN momentum 0.9 vs 0.99.

Issue 13, item 10: with ``bn_momentum`` 0.99 the moving statistics of batch norm need
thousands of steps to settle, so after the ~100 steps of a demo fold the model in inference
mode (what validation and inference use) sees activations normalised with statistics that
are still mostly their initial values (mean 0, variance 1). This trains the multi-arm model
with ``t2lesion.unet.train.train_fold`` (this project's loss and schedules, Adam, deep
supervision) at demo sizes on synthetic windows with bright FLAIR/T2w lesions, once per
momentum, and reports per epoch the validation Dice in inference mode, the validation Dice of
the same weights with batch statistics (``training=True`` on BN, dropout off), and the mean
finest-head logit on background voxels in inference mode.

    .venv/bin/python benchmarks/bench_bn_momentum.py [--momenta 0.9 0.99] [--epochs 3]
        [--steps 40] [--widths 8 16 32 64] [--patch 16 48 48] [--batch 10] [--lr 1e-3]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def blobs(n: int, patch, seed: int, noise: float = 0.3):
    """``n`` windows with 1-4 ellipsoidal lesions (3:1 mm voxels), brighter in FLAIR/T2w."""
    from t2lesion.unet.losses import alpha_map, pack_targets

    rng = np.random.default_rng(seed)
    z, y, x = patch
    zz, yy, xx = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    imgs = rng.normal(0, noise, (n, z, y, x, 3)).astype("float32")
    masks = np.zeros((n, z, y, x), "float32")
    for b in range(n):
        for _ in range(rng.integers(1, 5)):
            c = rng.uniform([2, 6, 6], [z - 2, y - 6, x - 6])
            r = rng.uniform(1.0, 4.0)
            masks[b][((zz - c[0]) * 3) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= (2 * r) ** 2] = 1
    imgs[..., 0] += 1.0 * masks
    imgs[..., 1] += 1.5 * masks
    imgs[..., 2] -= 0.5 * masks
    return imgs, pack_targets(masks, np.stack([alpha_map(m) for m in masks]))


def make_dataset(x, t, batch, n_out, seed, shuffle):
    import keras

    class Windows(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.set_epoch(0)

        def set_epoch(self, epoch):
            self.order = np.random.default_rng([seed, epoch]).permutation(len(x)) if shuffle else np.arange(len(x))

        def __len__(self):
            return len(x) // batch

        def __getitem__(self, i):
            idx = self.order[i * batch:(i + 1) * batch]
            return x[idx], (t[idx],) * n_out

    return Windows()


def mode_dice(model, x, t, batch) -> tuple[float, float, float]:
    """Finest-head Dice in inference mode, Dice with BN batch statistics (dropout off), and
    the mean background logit in inference mode."""
    import keras

    from t2lesion.unet.model import make_mc_decoder

    enc, dec = model.get_layer("encoder"), model.get_layer("decoder")
    dec0 = make_mc_decoder(dec, rate=0.0)  # dropout layers at rate 0, every other layer shared
    tp = pp = gg = 0
    ti = pi = 0
    logits = []
    head = dec.get_layer("prob_d1_conv")
    logit_model = keras.Model(dec.inputs, head.output)
    for i in range(0, len(x), batch):
        xb, mb = x[i:i + batch], t[i:i + batch, ..., 0] > 0.5
        saved = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
        p = keras.ops.convert_to_numpy(dec0(enc(xb, training=True), training=True)[0])[..., 0] > 0.5
        for v, a in zip(model.non_trainable_variables, saved):  # training=True updated the moving stats
            v.assign(a)
        tp += int(np.count_nonzero(p & mb))
        pp += int(np.count_nonzero(p))
        gg += int(np.count_nonzero(mb))
        lg = keras.ops.convert_to_numpy(logit_model(enc(xb, training=False), training=False))[..., 0]
        logits.append(lg[~mb])
        q = lg > 0  # sigmoid > 0.5
        ti += int(np.count_nonzero(q & mb))
        pi += int(np.count_nonzero(q))

    def dice(a, b):
        return 2 * a / (b + gg) if b + gg else 1.0

    return dice(ti, pi), dice(tp, pp), float(np.concatenate(logits).mean())


def run(momentum: float, args, train, val, out: Path, log) -> dict:
    import keras

    from t2lesion.unet import model as M
    from t2lesion.unet.train import train_fold

    widths = list(args.widths)
    depth = len(widths)
    model_cfg = {
        "patch_size": list(args.patch), "widths": widths,
        "strides": [[1, 2, 2]] + [[2, 2, 2]] * (depth - 2),
        "block_kernels": [[[1, 3, 3], [3, 3, 3]]] * depth, "supervision_levels": min(3, depth - 1),
        "bn_momentum": momentum,
    }
    n_out = model_cfg["supervision_levels"]
    tr = make_dataset(*train, args.batch, n_out, 1, True)
    va = make_dataset(*val, args.batch, n_out, 2, False)
    t0 = time.perf_counter()
    res = train_fold(tr, va, out, model_cfg, {}, {"epochs": args.epochs, "steps_per_epoch": args.steps,
                                                 "learning_rate": args.lr, "mixed_precision": "off"},
                     seed=11, log=log)
    wall = time.perf_counter() - t0
    rows = []
    # the untrained model first, then the checkpoint after training (the last epoch)
    keras.utils.set_random_seed(11)
    fresh = M.build_model(M.ModelConfig.from_dict({**model_cfg, "seed": 11}))
    i_fresh, d_fresh, l_fresh = mode_dice(fresh, *val, args.batch)
    last = M.load_model(out / "last.keras")
    i_last, d_last, l_last = mode_dice(last, *val, args.batch)
    for r in res["history"]:
        rows.append({k: r[k] for k in ("epoch", "iterations", "loss", "val_loss", "val_dice")})
    return {"bn_momentum": momentum, "history": rows, "untrained_bg_logit_inference": l_fresh,
            "untrained_dice_inference": i_fresh, "untrained_dice_batch_stats": d_fresh,
            "final_dice_inference": i_last, "final_dice_batch_stats": d_last, "final_bg_logit_inference": l_last, "best_val_dice_inference": res["best_val_dice"],
            "wall_s": round(wall, 1), "params": M.count_params(last)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--momenta", type=float, nargs="+", default=[0.9, 0.99])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--patch", type=int, nargs=3, default=[16, 48, 48])
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("bench_bn")
    train = blobs(args.steps * args.batch, args.patch, seed=1)
    val = blobs(4 * args.batch, args.patch, seed=2)
    report = {"args": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vars(args).items()
                       if k != "json"}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.momenta:
            r = run(m, args, train, val, Path(tmp) / f"bn{m}", log)
            report["runs"].append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
