"""The Keras backend of a U-Net job (config ``dl.backend``), chosen before Keras is imported.

Keras reads ``KERAS_BACKEND`` once, when it is first imported, so the train and infer jobs
call :func:`select` right after :func:`t2lesion.gpu.lease` and before anything imports
Keras:

``auto``        JAX where JAX is installed and sees a GPU (``jax.devices("gpu")``: the
                GPU environment, requirements-gpu.lock), else TensorFlow (``tensorflow_cpu``
                in both locks). The log line says why, JAX's own words included where it
                saw no GPU ("... Platforms present are: cpu").
``jax``, ``tensorflow``, ``torch``
                that backend; one not installed is a one-line :class:`InputError` naming
                ``dl.backend``.

The key is the one switch: a ``KERAS_BACKEND`` already in the environment is overridden
(and the log says so), so that a stray variable never decides which backend trained a model.
In a process that has already imported Keras (tests) the backend is the one Keras has;
asking for another is an error.

:func:`job_line` is the line every train and infer job logs once Keras is up: backend,
device (``cpu``, or ``gpu:0 NVIDIA H200``) and precision (the dtype policy).

:func:`compile_cache` (config ``dl.compile_cache``, called by :func:`start_job`) points JAX's
persistent compilation cache at one folder shared by all train, calibrate and infer jobs, so
that a model's step functions are compiled once, not once per fold and per inference batch.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from t2lesion.errors import InputError

log = logging.getLogger(__name__)

#: the values of ``dl.backend`` (schemas/config.schema.yaml)
SETTINGS = ("auto", "jax", "tensorflow", "torch")
#: the module that must be importable for each backend
MODULES = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}
NAMES = {"jax": "JAX", "tensorflow": "TensorFlow", "torch": "PyTorch"}


@dataclass(frozen=True)
class Choice:
    """What :func:`select` decided: ``backend`` (now in ``KERAS_BACKEND``) and ``reason``
    (the line it logged)."""

    backend: str
    reason: str


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """The compute capability of each CUDA GPU the Keras backend sees (empty where it sees none
    or cannot tell)."""
    backend = importlib.import_module("keras").backend.backend()
    try:
        if backend == "jax":
            jax = importlib.import_module("jax")
            return [parse_compute_capability(getattr(d, "compute_capability", None))
                    for d in jax.devices() if d.platform == "gpu"]
        if backend == "tensorflow":
            tf = importlib.import_module("tensorflow")
            return [parse_compute_capability(tf.config.experimental.get_device_details(d).get("compute_capability"))
                    for d in tf.config.list_physical_devices("GPU")]
        if backend == "torch":
            torch = importlib.import_module("torch")
            return [tuple(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]
    except (RuntimeError, ValueError, AttributeError):
        return []
    return []


def parse_compute_capability(value) -> tuple[int, int]:
    """``"8.0"`` (JAX), ``(8, 0)`` (TensorFlow, torch) -> ``(8, 0)``; anything else ValueError."""
    if isinstance(value, str):
        major, _, minor = value.partition(".")
        return int(major), int(minor or 0)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f"not a compute capability: {value!r}")


def installed(backend: str) -> bool:
    """Whether the backend's library can be imported here (without importing it)."""
    return importlib.util.find_spec(MODULES[backend]) is not None


def jax_gpus() -> tuple[list[str], str | None]:
    """JAX's GPUs (``"gpu:<id> <device kind>"``) and, where it has none, why, in JAX's words.

    Imports JAX (not Keras); on a GPU machine this initialises its CUDA backend, which a
    job that then runs on JAX needs anyway."""
    jax = importlib.import_module("jax")
    try:
        devices = jax.devices("gpu")
    except RuntimeError as err:  # "Unknown backend: 'gpu' requested, but no platforms ..."
        return [], " ".join(str(err).split())
    if not devices:
        return [], "jax.devices('gpu') is empty"
    return [f"gpu:{d.id} {d.device_kind}" for d in devices], None


def decide(setting: str, is_installed, probe) -> tuple[str, str]:
    """The backend for ``setting`` and the reason, given ``is_installed(backend) -> bool``
    and ``probe() -> (jax_gpus, why_none)`` (called only for ``auto`` with JAX installed)."""
    if setting not in SETTINGS:
        raise InputError(f"dl.backend: {setting!r} is not one of {', '.join(SETTINGS)}")
    if setting != "auto":
        if not is_installed(setting):
            raise InputError(f"dl.backend: {setting} is not installed here (no module {MODULES[setting]!r}); "
                             "install it or set dl.backend: auto")
        return setting, f"dl.backend {setting}"
    if is_installed("jax"):
        t0 = time.perf_counter()
        gpus, why = probe()
        took = time.perf_counter() - t0
        if gpus:
            return "jax", f"dl.backend auto: JAX, which sees {', '.join(gpus)} (probe {took:.1f} s)"
        said = f"JAX sees no GPU and would fall back to the CPU (JAX: {why}; probe {took:.1f} s)"
    else:
        said = "JAX is not installed"
    if not is_installed("tensorflow"):
        raise InputError(f"dl.backend: auto found no backend to run ({said}; TensorFlow is not installed); "
                         "set dl.backend to an installed one")
    return "tensorflow", f"dl.backend auto: TensorFlow, since {said}"


def select(setting: str | None = "auto", gpu_leased: bool = False, logger: logging.Logger | None = None) -> Choice:
    """Set ``KERAS_BACKEND`` for ``dl.backend`` = ``setting`` (None: ``auto``) and log why.

    Call before Keras is imported. ``gpu_leased``: :func:`t2lesion.gpu.lease` gave this job a
    GPU (or kept the scheduler's); ``auto`` then warns when JAX does not see it (the CPU
    environment on a GPU machine: ``make env-gpu`` installs JAX's CUDA build). It warns too
    in the opposite case, a GPU that JAX sees but the lease did not find (``nvidia-smi``
    missing or failing): the job runs on it unleased, and GPU jobs that run at once share it.
    Raises :class:`InputError` (one line naming ``dl.backend``) for an unknown or uninstalled
    backend.
    """
    logger = logger or log
    setting = setting or "auto"
    if "keras" in sys.modules:  # a test process: the backend is fixed already
        current = sys.modules["keras"].backend.backend()
        if setting not in ("auto", current):
            raise InputError(f"dl.backend: {setting} asked for, but this process imported Keras with the "
                             f"{current} backend already")
        reason = f"dl.backend {setting}: Keras was already imported here with the {current} backend"
        logger.info(reason)
        return Choice(current, reason)
    backend, reason = decide(setting, installed, jax_gpus)
    before = os.environ.get("KERAS_BACKEND")
    if before not in (None, "", backend):
        reason += f" (KERAS_BACKEND={before} in the environment overridden)"
    os.environ["KERAS_BACKEND"] = backend
    if setting == "auto" and gpu_leased and backend != "jax":
        logger.warning("%s; but this job leased a GPU: %s runs on the CPU (is JAX's CUDA build installed? "
                       "make env-gpu)", reason, NAMES[backend])
    elif setting == "auto" and not gpu_leased and backend == "jax":
        logger.warning("%s; but the GPU lease found no GPU (t2lesion.gpu: see the line above), so this job runs "
                       "on JAX's first GPU without a lease and GPU jobs that run at once share it: put nvidia-smi "
                       "on PATH, or list the GPU ids in T2LESION_GPUS", reason)
    else:
        logger.info(reason)
    return Choice(backend, reason)


def start_job(config: dict | None):
    """What every GPU job (train, calibrate, infer) does before it imports Keras: lease a GPU
    (:func:`t2lesion.gpu.lease`) and choose the Keras backend for it from the config's
    ``dl.backend`` (read from the config, not from a rule's params: the backend is how a job
    runs, like its threads, so changing it reruns nothing; a model trained on one backend loads
    on any other). Returns the lease."""
    from t2lesion import gpu

    dl = (config or {}).get("dl") or {}
    lease = gpu.lease()
    choice = select(dl.get("backend"), lease.how != "cpu")
    compile_cache(dl.get("compile_cache"), choice.backend)
    return lease


def compile_cache(folder: str | os.PathLike | None, backend: str,
                  logger: logging.Logger | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at ``folder`` (config ``dl.compile_cache``;
    None = off) when the Keras backend is JAX, and log one line: the folder, how many entries
    it holds already and whether JAX uses it. Returns the folder in use, or None.

    Every compilation is cached (``jax_persistent_cache_min_compile_time_secs`` 0 and
    ``jax_persistent_cache_min_entry_size_bytes`` -1; JAX's defaults leave out the CPU's
    sub-second compiles), so a second job with the same model and shapes (another fold, the
    next inference batch) loads the executables instead of compiling them. JAX keys each entry
    on the program, the JAX/XLA version and the device, so one folder serves CPU and GPU jobs
    and stale entries are never used. With ``folder`` None a ``JAX_COMPILATION_CACHE_DIR`` in
    the environment still applies (JAX reads it); the line says so."""
    logger = logger or log
    if backend != "jax":
        if folder:
            logger.info("JAX compilation cache: not used (dl.compile_cache %s; the Keras backend is %s)",
                        folder, backend)
        return None
    jax = importlib.import_module("jax")
    if folder:
        path = Path(folder).expanduser().resolve()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"dl.compile_cache: cannot create {path} ({err.strerror})") from err
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        source = "dl.compile_cache"
    else:
        env = jax.config.jax_compilation_cache_dir
        if not env:
            logger.info("JAX compilation cache: off (dl.compile_cache: null)")
            return None
        path, source = Path(env), "JAX_COMPILATION_CACHE_DIR in the environment; dl.compile_cache is null"
    entries = sum(1 for p in path.iterdir() if not p.name.startswith(".")) if path.is_dir() else 0
    used = _jax_cache_used(jax)
    logger.info("JAX compilation cache: %s (%s), %d entr%s there, %s", path, source, entries,
                "y" if entries == 1 else "ies", "in use" if used else "NOT in use (JAX declined it)")
    return path if used else None


def _jax_cache_used(jax) -> bool:
    """Whether JAX will read and write its persistent cache in this process (it decides once,
    for the default device's runtime)."""
    try:
        from jax._src import compilation_cache as cc

        return bool(cc.is_cache_used(jax.devices()[0].client))
    except Exception:  # a private API: fall back to the public settings
        return bool(jax.config.jax_compilation_cache_dir and jax.config.jax_enable_compilation_cache)


def device() -> str:
    """The device the Keras backend computes on: ``cpu``, or ``gpu:<id> <name>`` (ids as the
    process sees them; a leased device is appended as ``CUDA_VISIBLE_DEVICES=<i>``)."""
    import keras

    backend = keras.backend.backend()
    name = "cpu"
    if backend == "jax":
        d = importlib.import_module("jax").devices()[0]
        if d.platform != "cpu":
            name = f"{d.platform}:{d.id} {d.device_kind}"
    elif backend == "tensorflow":
        tf = importlib.import_module("tensorflow")
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            name = f"gpu:0 {details.get('device_name', '')}".strip()
    elif backend == "torch":
        torch = importlib.import_module("torch")
        if torch.cuda.is_available():
            i = torch.cuda.current_device()
            name = f"gpu:{i} {torch.cuda.get_device_name(i)}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if name != "cpu" and visible:
        name += f" (CUDA_VISIBLE_DEVICES={visible})"
    return name


def model_precision(models: Iterable) -> str:
    """The dtype policy the models compute in: the commonest policy of their layers with
    weights (a loaded model's own ``dtype_policy`` is the global one at load time, not the
    saved one), e.g. ``mixed_bfloat16``; several models with different ones are listed."""
    import keras

    names = []
    for m in models:
        m = getattr(m, "model", m)  # an infer.FoldPredictor
        if not isinstance(m, keras.Model):
            continue
        count = Counter(layer.dtype_policy.name for layer in m._flatten_layers(include_self=False)
                        if layer.weights and not isinstance(layer, keras.Model))
        names.append(count.most_common(1)[0][0] if count else m.dtype_policy.name)
    return "/".join(sorted(set(names))) or "n/a (not Keras models)"


def job_line(precision: str) -> str:
    """``backend <b>, device <d>, precision <p>``: the line each train and infer job logs."""
    import keras

    return f"backend {keras.backend.backend()}, device {device()}, precision {precision}"


__all__ = ["MODULES", "SETTINGS", "Choice", "compile_cache", "decide", "device", "gpu_compute_capabilities", "installed",
           "jax_gpus", "job_line", "model_precision", "parse_compute_capability", "select", "start_job"]
