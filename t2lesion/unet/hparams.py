"""Model and loss hyper-parameters, and seeds: plain Python, no Keras import.

The workflow checks the ``model:`` and ``loss:`` sections at start (``section_problems``,
called by :func:`t2lesion.config.check_config` after the JSON schema) without paying for a
backend import; :mod:`t2lesion.unet.model` and :mod:`t2lesion.unet.losses` re-export
``ModelConfig`` and ``LossConfig``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

Triple = tuple[int, int, int]

MODEL_KINDS = ("multiarm", "plain")
#: seeds stay below this (int32-safe on every backend's seed generator, with room for the
#: per-layer offsets ``seed + k`` the model adds)
SEED_LIMIT = 2**31 - 2**16

# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters. Defaults = the paper's model as interpreted in docs/model.md.

    widths: feature channels per depth (finest first) of the skip/decoder path and of the
        plain U-Net baseline ("the same number of filters at the various depths").
    arms: encoder arms as (name, channel names). Single-arm ablation: ``(("all", (...)),)``.
    arm_fractions: width of each arm as a fraction of ``widths``; the default (1/2, 3/8, 3/8)
        gives arm widths 16-128 (E1) and 12-96 (E2, E3); their concatenation (1.25 × widths[d])
        is reduced to widths[d] by the 1×1×1 projection.
    strides: stride from depth d to d+1 (z, y, x); len = depth - 1.
    block_kernels: per depth, the kernels of the two convs of each residual block.
    down_kernel: kernel rule of each strided downsampling conv (one per level step, HRNet-style
        chains for longer jumps): ``"stride+1"`` (3 on strided axes, 1 elsewhere: HRNet's 3×3
        stride-2 conv) or ``"stride"`` (kernel = stride, non-overlapping, cheaper).
    """

    patch_size: Triple = (32, 96, 96)
    spacing_mm: tuple[float, float, float] = (3.0, 1.0, 1.0)
    channel_order: tuple[str, ...] = ("T2w", "FLAIR", "T1w")
    widths: tuple[int, ...] = (32, 64, 128, 256)
    arms: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("all", ("T2w", "FLAIR", "T1w")),
        ("FLAIR", ("FLAIR",)),
        ("T2w", ("T2w",)),
    )
    arm_fractions: tuple[float, ...] = (0.5, 0.375, 0.375)
    strides: tuple[Triple, ...] = ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    block_kernels: tuple[tuple[Triple, Triple], ...] = (((1, 3, 3), (3, 3, 3)),) * 4
    down_kernel: str = "stride+1"
    dense_input: bool = True
    dense_skip: bool = True
    decoder_shortcuts: bool = True
    dropout_rate: float = 0.2
    supervision_levels: int = 3
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    output_prior: float | None = None
    seed: int = 0

    # -- derived -----------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.widths)

    def validate(self) -> ModelConfig:
        problems = []
        d = self.depth
        if d < 2:
            problems.append(f"widths must have >= 2 entries, got {self.widths}")
        if len(self.strides) != d - 1:
            problems.append(f"strides needs {d - 1} entries (one per downsampling), got {len(self.strides)}")
        if len(self.block_kernels) != d:
            problems.append(f"block_kernels needs {d} entries (one per depth), got {len(self.block_kernels)}")
        for key in ("patch_size", "spacing_mm"):
            v = getattr(self, key)
            if len(v) != 3 or any(not a > 0 for a in v):
                problems.append(f"{key} must be 3 positive numbers (z, y, x), got {v}")
        if any(int(w) != w or w < 1 for w in self.widths):
            problems.append(f"widths must be positive integers, got {self.widths}")
        if any(len(s) != 3 or any(int(a) != a or a < 1 for a in s) for s in self.strides):
            problems.append(f"strides must be (z, y, x) triples of positive integers, got {self.strides}")
        if any(len(bk) != 2 or any(len(k) != 3 or any(int(a) != a or a < 1 for a in k) for k in bk)
               for bk in self.block_kernels):
            problems.append("block_kernels: per depth two (z, y, x) kernels of positive integers")
        if any(not f > 0 for f in self.arm_fractions):
            problems.append(f"arm_fractions must be positive, got {self.arm_fractions}")
        if not 0.0 <= self.bn_momentum < 1.0:
            problems.append(f"bn_momentum must be in [0, 1), got {self.bn_momentum}")
        if self.output_prior is not None and not 0.0 < self.output_prior < 1.0:
            problems.append(f"output_prior must be in (0, 1) or null, got {self.output_prior}")
        if not self.bn_epsilon > 0:
            problems.append(f"bn_epsilon must be positive, got {self.bn_epsilon}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < SEED_LIMIT):
            problems.append(f"seed must be an integer in [0, 2**31 - 2**16), got {self.seed!r}")
        if problems:  # the checks below assume well-formed tuples
            raise ValueError("invalid ModelConfig:\n  - " + "\n  - ".join(problems))
        if len(self.arm_fractions) != len(self.arms):
            problems.append("arm_fractions must have one entry per arm")
        if self.down_kernel not in ("stride", "stride+1"):
            problems.append(f"down_kernel must be 'stride' or 'stride+1', got {self.down_kernel!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            problems.append(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if not 1 <= self.supervision_levels <= d - 1:
            problems.append(f"supervision_levels must be in [1, {d - 1}], got {self.supervision_levels}")
        for _, chans in self.arms:
            for c in chans:
                if c not in self.channel_order:
                    problems.append(f"arm channel {c!r} not in channel_order {self.channel_order}")
        tot = self.total_strides()[-1]
        for ax in range(3):
            if self.patch_size[ax] % tot[ax]:
                problems.append(
                    f"patch_size {self.patch_size} axis {ax} is not divisible by the total stride {tot[ax]}"
                )
        if problems:
            raise ValueError("invalid ModelConfig:\n  - " + "\n  - ".join(problems))
        return self

    def total_strides(self) -> list[Triple]:
        """Cumulative stride (jump, in input voxels) at each depth, finest first."""
        out = [(1, 1, 1)]
        for s in self.strides:
            out.append(tuple(int(a * b) for a, b in zip(out[-1], s)))
        return out

    def arm_widths(self, arm_index: int) -> list[int]:
        f = self.arm_fractions[arm_index]
        return [max(1, round(f * w)) for w in self.widths]

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict | None) -> ModelConfig:
        """Build from a (YAML/JSON) mapping; unknown keys are an error, lists become tuples.
        ``seed: null`` means the default (0); the training job resolves it first (``fold_seed``)."""
        d = dict(d or {})
        if d.get("seed", 0) is None:  # config.yaml's "derive from the global seed": resolved by the caller
            d.pop("seed")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**{k: _to_tuple(v) for k, v in d.items()}).validate()


def _to_tuple(v):
    if isinstance(v, (list, tuple)):
        return tuple(_to_tuple(x) for x in v)
    return v


def _to_plain(v):
    if isinstance(v, (list, tuple)):
        return [_to_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_plain(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class LossConfig:
    """Loss hyper-parameters (docs/DESIGN.md §5). Midpoints/slopes are interpretations (docs/model.md)."""

    gamma_start: float = 0.02
    gamma_end: float = 0.15
    beta_min: float = 0.1
    beta_max: float = 1.0
    beta_midpoint: float = 0.5  # fraction of the training epochs
    beta_width: float = 0.1  # sigmoid scale, fraction of the training epochs
    alpha_max: float = 100.0
    alpha_min: float = 1.0
    alpha_midpoint_voxels: float = 30.0  # 30 voxels = 90 µL at 1×1×3 mm
    alpha_slope_voxels: float = 10.0
    alpha_connectivity: int = 18
    dice_smooth: float = 1.0

    def validate(self) -> LossConfig:
        """Values for which Eq. 1–2 or the schedules are undefined raise ``ValueError``.
        (A γ that falls over training, ``gamma_end < gamma_start``, is allowed: an ablation.)"""
        p = []
        for k in ("gamma_start", "gamma_end"):
            if not 0.0 < getattr(self, k) < 1.0:
                p.append(f"{k} must be in (0, 1) (a probability; log γ), got {getattr(self, k)}")
        for k in ("beta_min", "beta_max", "alpha_min", "alpha_max"):
            if not getattr(self, k) >= 0.0:
                p.append(f"{k} must be >= 0, got {getattr(self, k)}")
        for k in ("beta_width", "alpha_slope_voxels", "dice_smooth"):
            if not getattr(self, k) > 0.0:
                p.append(f"{k} must be > 0 (it divides), got {getattr(self, k)}")
        if self.alpha_connectivity not in (6, 18, 26):
            p.append(f"alpha_connectivity must be 6, 18 or 26, got {self.alpha_connectivity}")
        if p:
            raise ValueError("invalid LossConfig:\n  - " + "\n  - ".join(p))
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> LossConfig:
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown loss config keys: {unknown}")
        return cls(**d).validate()


# --------------------------------------------------------------------------- config.yaml sections


def fold_seed(global_seed: int, fold: int, explicit: int | None = None) -> int:
    """Seed of fold ``fold``'s model (weights, dropout), in [0, SEED_LIMIT).

    ``explicit`` (config ``model.seed``) wins when it is not None (ablations: every fold
    starts from the same weights). Otherwise a hash of (global seed, fold): distinct folds
    get unrelated seeds, stable across Python/numpy versions and platforms.
    """
    if explicit is not None:
        e = int(explicit)
        if not 0 <= e < SEED_LIMIT:
            raise ValueError(f"model.seed must be in [0, {SEED_LIMIT}), got {explicit}")
        return e
    h = hashlib.blake2b(f"t2lesion-fold:{int(global_seed)}:{int(fold)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % SEED_LIMIT


def split_model_section(section: dict | None, seed: int | None = None) -> tuple[str, ModelConfig]:
    """``model:`` mapping of config.yaml -> (kind, ModelConfig). ``seed`` replaces a null
    ``model.seed`` (pass ``fold_seed(...)``); an explicit ``model.seed`` is kept."""
    d = dict(section or {})
    kind = d.pop("kind", "multiarm")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r} (use 'multiarm' or 'plain')")
    if d.get("seed") is None and seed is not None:
        d["seed"] = int(seed)
    return kind, ModelConfig.from_dict(d)


def section_problems(config: dict) -> list[str]:
    """Cross-field checks of the ``model:`` and ``loss:`` sections that JSON Schema cannot
    express (list lengths against the depth, patch size against the total stride, arm
    channels); one line per problem, as ``t2lesion.config`` reports them."""
    out = []
    for key, build in (("model", split_model_section), ("loss", LossConfig.from_dict)):
        if key not in config:
            continue
        try:
            build(config[key])
        except (ValueError, TypeError) as exc:
            lines = [ln.strip(" -") for ln in str(exc).splitlines()[1:]] or [str(exc)]
            out.extend(f"config: {key}: {ln}" for ln in lines if ln)
    return out


__all__ = ["MODEL_KINDS", "SEED_LIMIT", "LossConfig", "ModelConfig", "fold_seed", "section_problems",
           "split_model_section"]
