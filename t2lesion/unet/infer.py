"""Ensembled MC-dropout inference of the multi-arm U-Net over whole visits (docs/DESIGN.md §7).

Per visit, on the preprocessed MNI 1 × 1 × 3 mm grid (arrays (z, y, x), channels
``ModelConfig.channel_order`` = T2w, FLAIR, T1w):

1. **Sliding windows** of the model's patch size cover the brain mask's bounding box
   (:func:`t2lesion.unet.windows.window_corners`; the volume is zero-padded when it is smaller
   than a window, a box smaller than a window is widened inside the volume). Windows go to the
   model ``batch_size`` at a time; the remainder goes in power-of-two batches, largest first
   (:func:`t2lesion.unet.windows.window_batches`: 12 windows at 8 are 8 + 4), so no empty
   window is computed and a fold's graph sees at most ``1 + log2(batch_size)`` static shapes,
   each traced (and, on JAX, compiled into the persistent cache) once.
2. **MC dropout, encoder cached**: per fold, one fused graph (``build_mc_predictor``) runs the
   deterministic encoder once on the window batch and the MC decoder (dropout on, batch norm
   in inference mode) on the features repeated ``mc_samples`` times along the batch, and
   returns per-window moments ``[E p, E p², E H(p)]`` over the samples (3 channels, not n
   samples, come back to the host).
3. **Blending**: per window the folds' moments are averaged, the window's mean μ_w gives two
   more statistics (μ_w², H(μ_w)), and the five are weighted by the blending map (Gaussian,
   σ = window/8 per axis, or uniform) and accumulated in float32 arrays over the windows'
   region (never the samples); dividing by the weight sum reproduces a constant prediction
   exactly. Voxels outside the brain box are 0 in every map. The models compute batch b + 1
   in a worker thread while the host blends batch b (:func:`box_moments`).
4. **Maps** from the blended statistics (:func:`derive_maps`): mean probability E p;
   predictive entropy H(E p); SD and mutual information (nats) of the folds × samples,
   ``uncertainty="within"`` (default): SD = sqrt(max(E p² − E μ_w², 0)),
   MI = max(E H(μ_w) − E H(p), 0), i.e. each window's spread, blended; or ``"mixture"``:
   SD = sqrt(max(E p² − (E p)², 0)), MI = max(H(E p) − E H(p), 0), the moments of the mixture
   over windows too, so that overlapping windows' disagreement (the context a window sees)
   counts as uncertainty. The two agree where one window covers a voxel.
5. The lesion mask is ``prob >= threshold`` inside the brain mask; :func:`mask_to_native`
   carries it to the native FLAIR grid through the inverse of the composed FLAIR → MNI
   transform, by nearest neighbour (see its docstring for why).

Seeds: every (visit, fold, window batch) gets its own dropout seed derived from the base seed
(:func:`derive_seed`), so a run is reproducible for a given seed and ``batch_size``.

Public API: :func:`predict_visit` (arrays in, maps out), :func:`predict_visits` (files in,
files out; loads each fold model once), :class:`FoldPredictor`, :func:`prepare_models`,
:func:`blend_weights`, :func:`sliding_window_moments`, :func:`derive_maps`,
:func:`mask_to_native`, :func:`map_to_native`, :data:`VISIT_KEYS`. See docs/inference.md.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from t2lesion.unet.windows import bounding_box, pad_to, window_batches, window_corners

log = logging.getLogger(__name__)

Triple = tuple[int, int, int]

#: Probability clip of the binary entropy, the same as ``layers.MCReduce``'s.
ENTROPY_EPS = 1e-7
#: Dropout seeds lie in [0, MAX_SEED): ``set_mc_seed`` stores ``seed * 1009 + k`` in a uint32.
MAX_SEED = 2**21
BLENDINGS = ("gaussian", "uniform")
UNCERTAINTIES = ("within", "mixture")
MAPS = ("prob", "mask", "sd", "entropy", "mi")
#: The maps a visit may go without (config ``inference.uncertainty_maps``).
OPTIONAL_MAPS = ("sd", "entropy")

#: Keys of a visit dict for :func:`predict_visits` (values: paths). Inputs: the preprocessed
#: contrasts and brain mask on the MNI grid, and (only for ``out_native_mask``) the native
#: FLAIR and the composed ``from-FLAIR_to-MNI1x1x3`` transform. Outputs: the maps on the MNI
#: grid (float32; the mask uint8), those of :data:`OPTIONAL_MAPS` only where named, and the
#: mask on the native FLAIR grid.
VISIT_KEYS = {
    "required": ("id", "T2w", "FLAIR", "T1w", "brain_mask", "out_prob", "out_mask", "out_mi"),
    "optional": ("out_sd", "out_entropy", "out_native_mask", "native_flair", "flair_xfm"),
}
CFG_DEFAULTS = {"mc_samples": 10, "overlap": 0.2, "blending": "gaussian", "batch_size": 8, "threshold": 0.5}
CFG_IGNORED = ("models", "threads", "visits_per_job", "uncertainty_maps")  # used by the workflow, not here


# --------------------------------------------------------------------------- numerics


def blend_weights(window: Sequence[int], blending: str = "gaussian") -> np.ndarray:
    """Blending map of a window (float32, max 1, > 0 everywhere).

    ``"gaussian"``: separable Gaussian centred on the window, σ = window/8 along each axis
    (nnU-Net's convention), so predictions near a window's border, which lack context, count
    little where another window covers them. ``"uniform"``: all ones.
    """
    if blending not in BLENDINGS:
        raise ValueError(f"blending must be one of {BLENDINGS}, got {blending!r}")
    window = tuple(int(w) for w in window)
    if blending == "uniform":
        return np.ones(window, np.float32)
    w = np.ones(window, np.float64)
    for ax, n in enumerate(window):
        i = np.arange(n, dtype=np.float64)
        sigma = n / 8.0
        g = np.exp(-0.5 * ((i - (n - 1) / 2.0) / sigma) ** 2)
        shape = [1, 1, 1]
        shape[ax] = n
        w = w * (g / g.max()).reshape(shape)
    return w.astype(np.float32)


def binary_entropy(p: np.ndarray, dtype=np.float64) -> np.ndarray:
    """H(p) in nats, p clipped to [ε, 1 − ε] like ``MCReduce``.

    ``dtype=np.float32``: ``MCReduce``'s own float32 formula, in place on one copy; 7× faster
    than float64 on a window batch, at most 1.3e-7 nats from it (the device's moments it is
    set beside are float32 too).
    """
    if np.dtype(dtype) == np.float32:
        pc = np.clip(np.asarray(p, np.float32), np.float32(ENTROPY_EPS), np.float32(1.0 - ENTROPY_EPS))
        q = np.float32(1.0) - pc
        h = np.log(pc)
        h *= pc
        t = np.log(q)
        t *= q
        h += t
        return np.negative(h, out=h)
    pc = np.clip(np.asarray(p, np.float64), ENTROPY_EPS, 1.0 - ENTROPY_EPS)
    return -(pc * np.log(pc) + (1.0 - pc) * np.log1p(-pc))


def moments_of(p: np.ndarray) -> np.ndarray:
    """``[p, p², H(p)]`` along a new last axis (the moments of a deterministic prediction)."""
    p = np.asarray(p, np.float32)
    return np.stack([p, p * p, binary_entropy(p).astype(np.float32)], axis=-1)


def derive_maps(moments: np.ndarray, inside: np.ndarray | None = None,
                uncertainty: str = "within") -> dict[str, np.ndarray]:
    """Maps from blended statistics ``(..., C)`` (float32 each: ``prob``, ``sd``, ``entropy``, ``mi``).

    Channels: ``[E p, E p², E H(p)]`` and, for ``uncertainty="within"``, also ``[E μ_w², E H(μ_w)]``
    (μ_w: a window's mean over folds and samples; E: the blended average over windows, see
    :func:`sliding_window_moments`). Always prob = E p and entropy = H(E p) (total predictive
    entropy). ``"mixture"`` (3 channels suffice): sd = sqrt(max(E p² − (E p)², 0)),
    mi = max(H(E p) − E H(p), 0) — the moments of the mixture over windows, folds and samples,
    so where windows overlap their disagreement counts too. ``"within"``:
    sd = sqrt(max(E p² − E μ_w², 0)), mi = max(E H(μ_w) − E H(p), 0) — the blended
    per-window spread over folds × samples only (0 for a deterministic model, whatever the
    overlap). ``inside`` (bool, optional): voxels that were predicted; all maps are 0 elsewhere.
    """
    if uncertainty not in UNCERTAINTIES:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTIES}, got {uncertainty!r}")
    m = np.asarray(moments, np.float64)
    if uncertainty == "within" and m.shape[-1] < 5:
        raise ValueError("uncertainty='within' needs the 5 blended channels of sliding_window_moments")
    p = m[..., 0]
    ent = binary_entropy(p)
    if uncertainty == "mixture":
        sd = np.sqrt(np.maximum(m[..., 1] - p * p, 0.0))
        mi = np.maximum(ent - m[..., 2], 0.0)
    else:
        sd = np.sqrt(np.maximum(m[..., 1] - m[..., 3], 0.0))
        mi = np.maximum(m[..., 4] - m[..., 2], 0.0)
    out = {"prob": p, "sd": sd, "entropy": ent, "mi": mi}
    if inside is not None:
        out = {k: np.where(inside, v, 0.0) for k, v in out.items()}
    return {k: v.astype(np.float32) for k, v in out.items()}


def derive_seed(*keys: int) -> int:
    """A dropout seed in [0, MAX_SEED) from integer keys (base seed, visit, fold, batch)."""
    ss = np.random.SeedSequence([int(k) % 2**32 for k in keys])
    return int(ss.generate_state(1, np.uint64)[0] % MAX_SEED)


def visit_key(visit_id: str) -> int:
    """Stable integer of a visit identifier (for :func:`derive_seed`)."""
    return zlib.crc32(str(visit_id).encode())


# --------------------------------------------------------------------------- fold predictors


def _full_model_mc(encoder, decoder, n: int, level: int):
    """Naive reference graph: the whole model (encoder included) on the n-fold repeated windows.

    It draws exactly the same dropout masks as the cached-encoder graph for the same seed
    (same MC decoder, same tensor shapes), so the two must agree; only the cost differs.
    """
    import keras

    from t2lesion.unet.layers import MCReduce, RepeatBatch

    x = keras.Input(shape=tuple(encoder.input.shape[1:]), name="image")
    probs = decoder(encoder(RepeatBatch(n, name="naive_repeat")(x)))
    out = MCReduce(n, mode="moments", name="naive_moments")(probs[level])
    return keras.Model(x, out, name=f"naive_mc_n{n}")


class FoldPredictor:
    """One fold's model, ready for window batches: ``moments(x, seed) -> (B, z, y, x, 3)``.

    ``model``: a model of :mod:`t2lesion.unet.model` (``decoder(encoder(x))``) → MC dropout
    with ``mc_samples`` passes; by default the encoder runs once per batch and the MC decoder
    on the repeated features (``build_mc_predictor``); ``cache_encoder=False`` runs the whole
    model on the repeated windows instead (reference/benchmark). ``dropout_rate`` overrides the
    model's rate (e.g. 0 for a check). Any other Keras model or callable mapping windows
    (B, z, y, x, C) to probabilities (B, z, y, x[, 1]) (or a list, finest first) is used as a
    deterministic predictor (no MC; its moments are [p, p², H(p)]); ``patch_size`` is then
    needed when it cannot be read from the model.
    Build it once per fold: the fused graph is compiled on its first call.
    """

    def __init__(self, model, mc_samples: int = 10, *, dropout_rate: float | None = None,
                 cache_encoder: bool = True, level: int = 0, patch_size: Sequence[int] | None = None):
        if int(mc_samples) < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        self.model = model
        self.mc_samples = int(mc_samples)
        self.level = int(level)
        self.cache_encoder = bool(cache_encoder)
        self.mc_decoder = None
        enc = _sub_model(model, "encoder")
        dec = _sub_model(model, "decoder")
        if enc is not None and dec is not None:
            from t2lesion.unet.model import build_mc_predictor, split_encoder_decoder

            enc, self.mc_decoder = split_encoder_decoder(model, mc=True, rate=dropout_rate)
            self.kind = "mc"
            self.n_channels = int(enc.input.shape[-1])
            self.patch_size = tuple(int(s) for s in enc.input.shape[1:4])
            if cache_encoder:
                self.graph = build_mc_predictor(enc, self.mc_decoder, self.mc_samples, mode="moments", level=level)
            else:
                self.graph = _full_model_mc(enc, self.mc_decoder, self.mc_samples, level)
        else:
            if not callable(model):
                raise TypeError(f"not a model or callable: {type(model).__name__}")
            self.kind = "deterministic"
            shape = getattr(model, "input_shape", None)
            self.n_channels = int(shape[-1]) if shape is not None and shape[-1] is not None else None
            ps = tuple(int(s) for s in shape[1:4]) if shape is not None and None not in shape[1:4] else None
            self.patch_size = ps if patch_size is None else tuple(int(s) for s in patch_size)
        if patch_size is not None and tuple(int(s) for s in patch_size) != self.patch_size:
            raise ValueError(f"patch_size {tuple(patch_size)} differs from the model's input {self.patch_size}")

    def moments(self, x: np.ndarray, seed: int) -> np.ndarray:
        """``[E p, E p², E H(p)]`` over the MC samples for each window: (B, z, y, x, 3) float32."""
        x = np.asarray(x, np.float32)
        if self.kind == "mc":
            from t2lesion.unet.model import set_mc_seed

            set_mc_seed(self.mc_decoder, seed)
            return np.asarray(self.graph.predict_on_batch(x), np.float32)
        f = getattr(self.model, "predict_on_batch", self.model)
        p = f(x)
        if isinstance(p, (list, tuple)):
            p = p[self.level]
        p = np.asarray(p, np.float32)
        if p.ndim == x.ndim:
            p = p[..., 0]
        if p.shape != x.shape[:-1]:
            raise ValueError(f"the model returned {p.shape} for windows {x.shape}")
        return moments_of(p)


def _sub_model(model, name: str):
    get = getattr(model, "get_layer", None)
    if get is None:
        return None
    try:
        return get(name)
    except ValueError:
        return None


def prepare_models(models, mc_samples: int = 10, **kw) -> list[FoldPredictor]:
    """:class:`FoldPredictor` per model (those already prepared are kept; their ``mc_samples``
    must match). ``kw``: see :class:`FoldPredictor`."""
    if not isinstance(models, (list, tuple)):
        models = [models]
    if not models:
        raise ValueError("no models given")
    out = []
    for m in models:
        if isinstance(m, FoldPredictor):
            if m.kind == "mc" and m.mc_samples != int(mc_samples):
                raise ValueError(f"a prepared model has mc_samples={m.mc_samples}, asked for {mc_samples}")
            out.append(m)
        else:
            out.append(FoldPredictor(m, mc_samples, **kw))
    return out


# --------------------------------------------------------------------------- sliding window


def sliding_window_moments(predictors: Sequence[FoldPredictor], images: np.ndarray, brain: np.ndarray,
                           patch_size: Sequence[int], overlap: float = 0.2, blending: str = "gaussian",
                           batch_size: int = 8, seed: int = 0, fold_ids: Sequence[int] | None = None,
                           stats: dict | None = None, prefetch: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Blended statistics ``(z, y, x, 5)`` (float32) of the ensemble over the brain box, and the
    bool map of the voxels inside the box (everything outside is 0).

    Channels: ``[E p, E p², E H(p)]`` over windows (blending weights), folds and MC samples, and
    ``[E μ_w², E H(μ_w)]``, the blended square and entropy of each window's own mean μ_w over
    folds × samples (what :func:`derive_maps` needs to leave window disagreement out).

    Fold ``i`` uses dropout seed ``derive_seed(seed, fold_ids[i], batch index)``. ``stats``
    (optional dict) receives ``windows`` and ``batches``. The box alone:
    :func:`box_moments` (what :func:`predict_visit` uses).
    """
    box_stats, box = box_moments(predictors, images, brain, patch_size, overlap, blending, batch_size, seed,
                                 fold_ids, stats, prefetch)
    shape = np.shape(brain)
    full = np.zeros(tuple(shape) + (5,), np.float32)
    full[box] = box_stats
    inside = np.zeros(shape, bool)
    inside[box] = True
    return full, inside


def box_moments(predictors: Sequence[FoldPredictor], images: np.ndarray, brain: np.ndarray,
                patch_size: Sequence[int], overlap: float = 0.2, blending: str = "gaussian",
                batch_size: int = 8, seed: int = 0, fold_ids: Sequence[int] | None = None,
                stats: dict | None = None, prefetch: bool = True) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """:func:`sliding_window_moments` over the brain's bounding box only: the blended statistics
    ``(bz, by, bx, 5)`` (float32) and the box's slices in ``images``. Nothing of the size of the
    whole volume is allocated or computed (the box of a brain on the MNI grid is 60 % of it).

    ``prefetch`` (default): every model call runs in one worker thread, a batch ahead, so that
    the host's blending of batch b overlaps the device's work on batch b + 1; the calls and
    their seeds are those of ``prefetch=False``, and so are the results, bit for bit.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (z, y, x, channels), got shape {images.shape}")
    brain = np.asarray(brain)
    if brain.shape != images.shape[:3]:
        raise ValueError(f"brain mask shape {brain.shape} differs from the images' {images.shape[:3]}")
    patch = tuple(int(p) for p in patch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fold_ids = list(range(len(predictors))) if fold_ids is None else [int(f) for f in fold_ids]
    if len(fold_ids) != len(predictors):
        raise ValueError(f"{len(fold_ids)} fold ids for {len(predictors)} models")
    for p in predictors:
        if p.n_channels is not None and p.n_channels != images.shape[-1]:
            raise ValueError(f"the model takes {p.n_channels} channels, the images have {images.shape[-1]}")

    lo, hi = bounding_box(brain)
    vol, off = pad_to(images, patch)
    lo_p = tuple(a + o for a, o in zip(lo, off))
    hi_p = tuple(b + o for b, o in zip(hi, off))
    corners = window_corners(vol.shape[:3], patch, overlap, lo_p, hi_p)
    r0 = corners.min(axis=0)
    r1 = corners.max(axis=0) + np.asarray(patch)
    region = tuple(int(b - a) for a, b in zip(r0, r1))
    acc = np.zeros(region + (5,), np.float32)
    wsum = np.zeros(region, np.float32)
    wmap = blend_weights(patch, blending)
    wmap3 = wmap[..., None]
    scale = np.float32(1.0 / len(predictors))

    plan = window_batches(len(corners), batch_size)

    def ensemble(b: int) -> np.ndarray:
        """Batch b's windows through every fold: the folds' mean moments (size, z, y, x, 3)."""
        start, size = plan[b]
        xb = np.empty((size,) + patch + (vol.shape[-1],), np.float32)
        for i, (z, y, x) in enumerate(corners[start:start + size]):
            xb[i] = vol[z:z + patch[0], y:y + patch[1], x:x + patch[2]]
        msum = None
        for pred, fid in zip(predictors, fold_ids):
            m = pred.moments(xb, derive_seed(seed, fid, b))
            if msum is None:
                msum = np.array(m, np.float32)  # contiguous: the folds' sum is not strided
            else:
                msum += m
        msum *= scale  # mean over folds (each: over its samples)
        return msum

    def blend(b: int, msum: np.ndarray) -> None:
        start, size = plan[b]
        st5 = np.empty((size,) + patch + (5,), np.float32)
        st5[..., :3] = msum
        mu = msum[..., 0]
        np.multiply(mu, mu, out=st5[..., 3])
        st5[..., 4] = binary_entropy(mu, np.float32)
        st5 *= wmap3  # weighted once per batch, then added window by window
        for i, c in enumerate(corners[start:start + size]):
            z, y, x = (int(v) for v in (c - r0))
            sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
            acc[sl] += st5[i]
            wsum[sl] += wmap

    if prefetch and len(plan) > 1:
        # the models compute batch b + 1 in one worker thread (every model call there, in batch
        # order: the same dropout draws) while this thread blends batch b
        with ThreadPoolExecutor(1, thread_name_prefix="infer-models") as pool:
            pending = pool.submit(ensemble, 0)
            for b in range(len(plan)):
                msum = pending.result()
                if b + 1 < len(plan):
                    pending = pool.submit(ensemble, b + 1)
                blend(b, msum)
    else:
        for b in range(len(plan)):
            blend(b, ensemble(b))
    in_region = tuple(slice(a - int(o), b - int(o)) for a, b, o in zip(lo_p, hi_p, r0))
    box_stats = acc[in_region] / wsum[in_region][..., None]
    if stats is not None:
        stats.update(windows=int(len(corners)), batches=len(plan))
    return box_stats, tuple(slice(a, b) for a, b in zip(lo, hi))


def predict_visit(models, images: np.ndarray, brain: np.ndarray, patch_size: Sequence[int] | None = None,
                  overlap: float = 0.2, blending: str = "gaussian", mc_samples: int = 10, batch_size: int = 8,
                  seed: int = 0, *, threshold: float = 0.5, fold_ids: Sequence[int] | None = None,
                  dropout_rate: float | None = None, cache_encoder: bool = True, uncertainty: str = "within",
                  stats: dict | None = None, prefetch: bool = True) -> dict[str, np.ndarray]:
    """Ensembled MC-dropout prediction of one visit.

    ``models``: fold models (Keras models of :mod:`t2lesion.unet.model`, prepared
    :class:`FoldPredictor` s — pass these to avoid rebuilding the graphs per visit — or
    deterministic callables). ``images`` (z, y, x, C) in the model's channel order; ``brain``
    (z, y, x) mask. ``patch_size`` defaults to the models'. Returns float32 maps ``prob``,
    ``sd``, ``entropy``, ``mi`` and the uint8 ``mask`` = (prob >= threshold) inside ``brain``,
    all (z, y, x). ``uncertainty``: how ``sd`` and ``mi`` treat overlapping windows
    (:func:`derive_maps`). ``fold_ids``: the folds' indices for the dropout seeds (default
    0..k-1; lets one fold be recomputed alone with its ensemble seeds). ``prefetch``: see
    :func:`box_moments`.
    """
    if uncertainty not in UNCERTAINTIES:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTIES}, got {uncertainty!r}")
    preds = prepare_models(models, mc_samples, dropout_rate=dropout_rate, cache_encoder=cache_encoder,
                           patch_size=patch_size)
    sizes = {p.patch_size for p in preds}
    if patch_size is None:
        if None in sizes:
            raise ValueError("patch_size is required for a model whose input size is unknown")
        if len(sizes) != 1:
            raise ValueError(f"the fold models have different patch sizes: {sorted(sizes)}")
        patch_size = sizes.pop()
    elif any(s is not None and s != tuple(int(v) for v in patch_size) for s in sizes):
        raise ValueError(f"patch_size {tuple(patch_size)} differs from the models' {sorted(s for s in sizes if s)}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    box_stats, box = box_moments(preds, images, brain, patch_size, overlap, blending, batch_size, seed,
                                 fold_ids, stats, prefetch)
    out = {}
    for k, v in derive_maps(box_stats, None, uncertainty).items():
        out[k] = np.zeros(np.shape(brain), np.float32)
        out[k][box] = v
    out["mask"] = ((out["prob"] >= threshold) & (np.asarray(brain) > 0)).astype(np.uint8)
    return out


# --------------------------------------------------------------------------- native space


def mask_to_native(mask, native_ref, xfm):
    """Carry a mask on the MNI grid (``sitk.Image``) to the grid of ``native_ref`` (the visit's
    native FLAIR) through the inverse of ``xfm``, the composed ``from-FLAIR_to-MNI1x1x3``
    transform (maps MNI points to native FLAIR points; an ``sitk.Transform`` or a path).

    Nearest neighbour: each native voxel takes the label of the MNI voxel its centre falls in,
    which keeps the lesion volume unbiased (±0.3 % on the synthetic trial, where linear + 0.5
    cut 7–14 % off small lesions' corners, see ``preprocess.resample.GT_INTERPOLATION``), and
    a reader checking the mask against the native FLAIR sees the labels the analysis counted.
    Returns a uint8 image with ``native_ref``'s geometry.
    """
    import SimpleITK as sitk

    out = sitk.Resample(sitk.Cast(mask, sitk.sitkUInt8), native_ref, _native_transform(xfm),
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    out.CopyInformation(native_ref)
    return out


def map_to_native(image, native_ref, xfm):
    """Carry a map on the MNI grid (``sitk.Image``: the probability or an uncertainty map) to
    the grid of ``native_ref`` through the inverse of ``xfm``, as :func:`mask_to_native` carries
    the mask, but by linear interpolation (a continuous map; 0 outside the MNI field of view).
    Returns a float32 image with ``native_ref``'s geometry (the reader's review bundle,
    t2lesion.review)."""
    import SimpleITK as sitk

    out = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), native_ref, _native_transform(xfm), sitk.sitkLinear,
                        0.0, sitk.sitkFloat32)
    out.CopyInformation(native_ref)
    return out


def _native_transform(xfm):
    """The MNI -> native FLAIR direction of the resampling: the inverse of the composed
    ``from-FLAIR_to-MNI1x1x3`` transform (which maps MNI points to native points)."""
    from t2lesion.preprocess._common import matrix_to_transform, read_transform, transform_to_matrix

    tx = read_transform(xfm) if isinstance(xfm, (str, Path)) else xfm
    return matrix_to_transform(np.linalg.inv(transform_to_matrix(tx)))


# --------------------------------------------------------------------------- files


def check_visit(visit: dict) -> None:
    """Raise ValueError naming the visit if keys are missing or unknown."""
    known = set(VISIT_KEYS["required"]) | set(VISIT_KEYS["optional"])
    name = visit.get("id", visit.get("out_prob", "?"))
    missing = [k for k in VISIT_KEYS["required"] if visit.get(k) is None]
    unknown = sorted(set(visit) - known)
    problems = []
    if missing:
        problems.append(f"lacks {missing}")
    if unknown:
        problems.append(f"has unknown keys {unknown} (known: {sorted(known)})")
    if visit.get("out_native_mask") is not None:
        need = [k for k in ("native_flair", "flair_xfm") if visit.get(k) is None]
        if need:
            problems.append(f"out_native_mask needs {need}")
    if problems:
        raise ValueError(f"inference visit {name}: " + "; ".join(problems))


def declared_maps(visits: Sequence[dict], outputs: Sequence[str] | None) -> list[dict]:
    """The visits without the :data:`OPTIONAL_MAPS` whose paths are not in ``outputs`` (an
    inference job's declared outputs: config ``inference.uncertainty_maps`` leaves maps out of
    them, not out of the visits, so the rule's params stay the same). ``None``: all kept."""
    if outputs is None:
        return [dict(d) for d in visits]
    declared = {str(o) for o in outputs}
    drop = {f"out_{k}" for k in OPTIONAL_MAPS}
    return [{k: v for k, v in d.items() if k not in drop or str(v) in declared} for d in visits]


def read_visit(visit: dict, channel_order: Sequence[str]):
    """(images (z, y, x, C) float32, brain (z, y, x) bool, reference sitk.Image) of a visit."""
    import SimpleITK as sitk

    from t2lesion.errors import InputError
    from t2lesion.io import read_image, same_geometry
    from t2lesion.preprocess._common import read_mask

    ref = read_image(visit["brain_mask"])
    brain = read_mask(visit["brain_mask"])
    chans = []
    for c in channel_order:
        if c not in visit:
            raise ValueError(f"inference visit {visit.get('id')}: no input for channel {c!r}")
        img = read_image(visit[c])
        if not same_geometry(img, ref):
            raise InputError(f"{visit[c]}: geometry (size {img.GetSize()}) differs from the brain mask "
                             f"{visit['brain_mask']} (size {ref.GetSize()})")
        arr = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise InputError(f"{visit[c]}: contains NaN/Inf voxels")
        chans.append(arr)
    return np.stack(chans, axis=-1), sitk.GetArrayFromImage(brain) > 0, ref


def load_fold_models(model_paths: Sequence[str | Path]) -> list:
    """Load each fold model once (``model.load_model``); a missing or unreadable file is an
    InputError naming it."""
    from t2lesion.errors import InputError
    from t2lesion.unet.model import load_model

    models = []
    for p in model_paths:
        p = Path(p)
        if not p.is_file():
            raise InputError(f"{p}: fold model not found")
        try:
            models.append(load_model(p, compile=False))
        except Exception as exc:  # keras raises many types for a bad archive
            raise InputError(f"{p}: cannot be loaded as a Keras model ({type(exc).__name__}: {exc})") from None
    return models


def inference_settings(cfg: dict | None) -> dict:
    """The ``inference:`` config section with defaults; unknown keys are a ValueError."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(CFG_DEFAULTS) - set(CFG_IGNORED))
    if unknown:
        raise ValueError(f"unknown inference config keys {unknown}")
    out = {k: cfg.get(k, v) if cfg.get(k) is not None else v for k, v in CFG_DEFAULTS.items()}
    out["mc_samples"] = int(out["mc_samples"])
    out["batch_size"] = int(out["batch_size"])
    problems = []
    if out["blending"] not in BLENDINGS:
        problems.append(f"blending must be one of {BLENDINGS}, got {out['blending']!r}")
    if not 0.0 <= float(out["overlap"]) < 1.0:
        problems.append(f"overlap must be in [0, 1), got {out['overlap']}")
    if out["mc_samples"] < 1 or out["batch_size"] < 1:
        problems.append("mc_samples and batch_size must be >= 1")
    if not 0.0 < float(out["threshold"]) < 1.0:
        problems.append(f"threshold must be in (0, 1), got {out['threshold']}")
    if problems:
        raise ValueError("inference config: " + "; ".join(problems))
    return out


def predict_visits(visits: Sequence[dict], model_paths: Sequence[str | Path], cfg: dict | None, seed: int,
                   log: logging.Logger | None = None, *, channel_order: Sequence[str] | None = None,
                   models: Sequence | None = None, uncertainty: str = "within") -> list[dict]:
    """Predict every visit with the ensemble of ``model_paths`` (each loaded once) and write its
    maps (keys: :data:`VISIT_KEYS`). ``cfg``: the ``inference:`` config section. ``seed``: base
    seed; visit ``v`` uses ``derive_seed(seed, visit_key(v["id"]))``. ``channel_order``: of the
    model inputs (default ``ModelConfig().channel_order``). ``models`` (instead of paths):
    already loaded models or :class:`FoldPredictor` s. ``uncertainty``: see :func:`derive_maps`.
    Returns one timing record per visit.
    """
    log = log or globals()["log"]
    s = inference_settings(cfg)
    for v in visits:
        check_visit(v)
    if channel_order is None:
        from t2lesion.unet.model import ModelConfig

        channel_order = ModelConfig().channel_order
    t0 = time.perf_counter()
    if models is None:
        models = load_fold_models(model_paths)
    preds = prepare_models(models, s["mc_samples"])
    t_load = time.perf_counter() - t0
    from t2lesion.unet.backend import job_line, model_precision

    log.info("%s", job_line(model_precision(preds)))
    log.info("inference: %d fold model(s) loaded in %.1f s; %d visit(s); %d MC sample(s) per fold, overlap %.2f, "
             "%s blending, batch %d", len(preds), t_load, len(visits), s["mc_samples"], s["overlap"],
             s["blending"], s["batch_size"])
    records = []
    for k, v in enumerate(visits):
        t1 = time.perf_counter()
        images, brain, ref = read_visit(v, channel_order)
        t2 = time.perf_counter()
        st: dict = {}
        maps = predict_visit(preds, images, brain, None, s["overlap"], s["blending"], s["mc_samples"],
                             s["batch_size"], derive_seed(seed, visit_key(v["id"])),
                             threshold=s["threshold"], uncertainty=uncertainty, stats=st)
        t3 = time.perf_counter()
        write_maps(maps, ref, v)
        t4 = time.perf_counter()
        rec = {"id": v["id"], "windows": st["windows"], "read_s": t2 - t1, "predict_s": t3 - t2,
               "write_s": t4 - t3, "total_s": t4 - t1,
               "lesion_ml": float(maps["mask"].sum()) * float(np.prod(ref.GetSpacing())) / 1000.0}
        records.append(rec)
        log.info("visit %d/%d %s: %d windows x %d fold(s) x %d MC, %.2f s (read %.2f, predict %.2f, write %.2f); "
                 "lesion volume %.2f mL", k + 1, len(visits), v["id"], st["windows"], len(preds), s["mc_samples"],
                 rec["total_s"], rec["read_s"], rec["predict_s"], rec["write_s"], rec["lesion_ml"])
    return records


def write_maps(maps: dict[str, np.ndarray], ref, visit: dict, threads: int | None = None) -> None:
    """Write each of a visit's :data:`MAPS` that ``visit`` names (``visit["out_<name>"]``; those
    of :data:`OPTIONAL_MAPS` may be left out) on the grid of ``ref`` and, where
    ``visit`` has ``out_native_mask``, the mask resampled to its native FLAIR, each file on its
    own thread (at most ``threads``; default: ITK's global thread count, which
    :func:`t2lesion.logs.rule_log` sets to the job's ``threads``). ITK releases the GIL while
    it gzips, so on n cores the visit's write takes about 1/n of its sequential time
    (benchmarks/bench_write_maps.py: gzip levels gain nothing on these float maps)."""
    import SimpleITK as sitk

    from t2lesion.io import read_image, write_array
    from t2lesion.preprocess._common import write_image

    def native_mask():
        native = read_image(visit["native_flair"])
        mask_img = _as_image(maps["mask"], ref)
        write_image(mask_to_native(mask_img, native, Path(visit["flair_xfm"])), visit["out_native_mask"])

    jobs = [(lambda name=name: write_array(maps[name], ref, visit[f"out_{name}"])) for name in MAPS
            if visit.get(f"out_{name}") is not None]
    if visit.get("out_native_mask") is not None:
        jobs.append(native_mask)
    n = max(1, min(len(jobs), threads or sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()))
    if n == 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(n, thread_name_prefix="write-maps") as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()  # the first error, if any, after every write has ended


def _as_image(arr: np.ndarray, ref):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    return img


__all__ = [
    "BLENDINGS",
    "FoldPredictor",
    "MAX_SEED",
    "OPTIONAL_MAPS",
    "VISIT_KEYS",
    "binary_entropy",
    "blend_weights",
    "box_moments",
    "declared_maps",
    "derive_maps",
    "derive_seed",
    "inference_settings",
    "load_fold_models",
    "map_to_native",
    "mask_to_native",
    "moments_of",
    "predict_visit",
    "predict_visits",
    "prepare_models",
    "sliding_window_moments",
    "visit_key",
    "write_maps",
]
