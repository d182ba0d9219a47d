"""Batches of training windows (docs/DESIGN.md §6), free of Keras: the batch source of the
loader (:class:`WindowBatches`) and worker processes that build its batches in shared memory
(:class:`BatchWorkers`). :class:`t2lesion.unet.data.PatchDataset` puts them behind Keras.

Determinism
-----------
Which window a sample shows and how it is augmented are a pure function of
``(seed, epoch, sample position)``: sample ``i`` of an epoch draws from
``np.random.default_rng(np.random.SeedSequence([seed, epoch, i]))`` and the epoch's window
order from a permutation seeded by ``(seed, epoch)``. Batches therefore do not depend on
which worker builds them, in what order, or on threads vs processes. The epoch is set
explicitly (``set_epoch``); a worker process is told the epoch with every batch it builds.

Worker processes
----------------
Threads share the interpreter lock for the Python parts of a batch (the draws, the elastic
field, the per-sample loops), and Keras' own process workers send every batch back through a
pipe: 2 × 29 MB of pickling and copying per batch of ten 32×96×96 windows, which cost more
than it saved (BENCHMARKS.md). :class:`BatchWorkers` starts plain ``python`` processes instead
(not ``fork``: the training process runs TensorFlow's or JAX's threads; not
``multiprocessing``'s spawn: it would re-run a Snakemake script as the main module). Each
worker owns one slot of a file in ``/dev/shm``, builds whole batches into it with
:meth:`WindowBatches.fill` and answers with a few bytes over its pipe; the caller copies the
slot out. The file is unlinked as soon as every worker has mapped it, so nothing is left behind
however the job ends, and a worker exits when its pipe closes.
"""

from __future__ import annotations

import math
import os
import pickle
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from t2lesion.errors import InputError
from t2lesion.unet.augment import SPACING_ZYX, copy_channels, draw_augmentation, warp, warp_sample
from t2lesion.unet.patches import ALPHA, INDEX_COLUMNS, MASK, open_visit, read_index

#: entropy tag that keeps the order streams apart from the per-sample streams
_ORDER_TAG = 0x6F72646572
#: where worker processes share their batches (a RAM-backed file system)
SHARED_MEMORY_DIR = "/dev/shm"
#: glibc's malloc in a worker process: keep freed memory for the next batch's temporaries
#: (up to 32 MB each) instead of returning it to the kernel and faulting in fresh zeroed pages
#: for every batch, which took 30 % of a worker's CPU time (system time) and 1.46x its
#: throughput at 2 workers (BENCHMARKS.md). Other C libraries ignore the variables.
_WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30)}


class WindowBatches:
    """Batches of indexed windows: x (B, z, y, x, 3) float32 in ``[T2w, FLAIR, T1w]`` order and
    t (B, z, y, x, 2) float32 ``[mask, alpha]`` (the packed target of ``losses.pack_targets``).

    ``index``: a window index (``patches.INDEX_COLUMNS``) or the path of its TSV; relative
    ``path`` entries are resolved against the working directory. ``steps``: batches per
    epoch; None = ceil(windows / batch_size). Batches are always full: positions past the
    windows continue into the next pass over them (a fresh permutation when shuffling; the
    same order otherwise), so ``steps`` larger than one pass samples windows by cycling.
    For validation use ``augment_fraction=0, shuffle=False``. ``augment_kwargs`` go to
    :func:`t2lesion.unet.augment.draw_augmentation`.
    """

    def __init__(self, index: pd.DataFrame | str | Path, patch_size, batch_size: int = 10,
                 augment_fraction: float = 0.5, seed: int = 0, shuffle: bool = True, steps: int | None = None,
                 spacing: Sequence[float] = SPACING_ZYX, augment_kwargs: dict | None = None):
        source = str(index) if isinstance(index, (str, Path)) else "window index"
        df = read_index(index) if isinstance(index, (str, Path)) else index
        need = [c for c in INDEX_COLUMNS if c not in ("fold",)]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise InputError(f"{source}: window index lacks column(s) {missing}")
        if len(df) == 0:
            raise InputError(f"{source}: window index has no windows (no visit with lesion voxels?)")
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
            raise ValueError(f"patch_size must be three positive integers, got {patch_size!r}")
        if batch_size < 1 or (steps is not None and steps < 1):
            raise ValueError(f"batch_size and steps must be ≥ 1, got {batch_size}, {steps}")
        if not 0.0 <= augment_fraction <= 1.0:
            raise ValueError(f"augment_fraction must be in [0, 1], got {augment_fraction}")
        self.paths = df["path"].astype(str).to_numpy()
        self.corners = df[["corner_z", "corner_y", "corner_x"]].to_numpy(dtype=np.int64)
        self.windows = df.reset_index(drop=True)
        self.batch_size = int(batch_size)
        self.augment_fraction = float(augment_fraction)
        self.seed = int(seed) % 2**63
        self.shuffle = bool(shuffle)
        self.steps = None if steps is None else int(steps)
        self.spacing = tuple(float(s) for s in spacing)
        self.augment_kwargs = dict(augment_kwargs or {})
        self.epoch = 0
        self._cache: dict[str, np.ndarray] = {}
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    # -- pickling for worker processes: never ship the memory maps, each worker opens its own
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}
        state["_orders"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def plain(self) -> WindowBatches:
        """A :class:`WindowBatches` with this one's state (that of :meth:`__getstate__`), to send
        to a worker process: unpickling it imports this module only, not a subclass's (Keras)."""
        copy = WindowBatches.__new__(WindowBatches)
        copy.__setstate__(self.__getstate__())
        return copy

    def __len__(self) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil(len(self.paths) / self.batch_size)

    @property
    def batch_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of a batch's x and t."""
        return (self.batch_size,) + self.patch_size + (MASK,), (self.batch_size,) + self.patch_size + (2,)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentations the batches show."""
        self.epoch = int(epoch)

    def _visit(self, path: str) -> np.ndarray:
        arr = self._cache.get(path)
        if arr is None:
            arr = open_visit(path)
            if any(n < p for n, p in zip(arr.shape[:3], self.patch_size)):
                raise InputError(f"{path}: stored array {arr.shape[:3]} is smaller than the patch {self.patch_size}")
            self._cache[path] = arr
        return arr

    def _order(self, cycle: int) -> np.ndarray:
        key = (self.epoch, cycle)
        order = self._orders.get(key)
        if order is None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, _ORDER_TAG, cycle]))
            order = rng.permutation(len(self.paths))
            if len(self._orders) > 8:
                self._orders.clear()
            self._orders[key] = order
        return order

    def window_of(self, position: int) -> int:
        """Row of the index shown at sample ``position`` of the current epoch."""
        n = len(self.paths)
        cycle, k = divmod(int(position), n)
        return int(self._order(cycle)[k]) if self.shuffle else k

    def sample(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``position`` of the current epoch: image (z, y, x, 3), target (z, y, x, 2);
        the per-sample reference (SciPy's resampling, :func:`warp` of the same draw) of a batch's samples."""
        arr, corner, draw = self._draw(position)
        if draw is not None:
            return warp(arr[..., :MASK], arr[..., MASK:], out_shape=self.patch_size, center=self._center(corner),
                        spacing=self.spacing, **draw)
        window = np.asarray(arr[self._box(corner)], dtype=np.float32)
        return window[..., :MASK], window[..., MASK:ALPHA + 1]

    def _box(self, corner: np.ndarray) -> tuple[slice, ...]:
        return tuple(slice(int(c), int(c) + p) for c, p in zip(corner, self.patch_size))

    def _center(self, corner: np.ndarray) -> np.ndarray:
        return corner + (np.array(self.patch_size) - 1) / 2.0

    def check_batch(self, i: int) -> None:
        """IndexError unless ``i`` is a batch of the epoch."""
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range (0…{len(self) - 1})")

    def batch(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``i`` of the current epoch as new arrays ``(x, t)`` (:meth:`fill`)."""
        x, t = (np.empty(s, np.float32) for s in self.batch_shapes)
        self.fill(i, x, t)
        return x, t

    def fill(self, i: int, x: np.ndarray, t: np.ndarray) -> None:
        """Write batch ``i`` into ``x`` and ``t`` (:attr:`batch_shapes`): the samples of
        :meth:`sample` (the same draws), the augmented ones by :func:`warp_sample` (NumPy
        resampling instead of SciPy's per channel: the same windows to float32 rounding, about
        twice the patches per CPU-second), each copied channel by channel."""
        self.check_batch(i)
        for b in range(self.batch_size):
            arr, corner, draw = self._draw(i * self.batch_size + b)
            if draw is None:
                window = arr[self._box(corner)]
            else:
                window = warp_sample(arr, MASK, draw, self._center(corner), self.patch_size, self.spacing)
            copy_channels(x[b], window[..., :MASK])
            copy_channels(t[b], window[..., MASK:ALPHA + 1])

    def _draw(self, position: int):
        """Sample ``position``'s visit array, window corner and augmentation draw (None: the
        plain window), from the sample's own generator as :meth:`sample` draws them."""
        row = self.window_of(position)
        arr = self._visit(self.paths[row])
        corner = self.corners[row]
        if np.any(corner < 0) or np.any(corner + self.patch_size > np.array(arr.shape[:3])):
            raise InputError(f"{self.paths[row]}: window at {tuple(corner)} of size {self.patch_size} "
                             f"lies outside the stored array {arr.shape[:3]}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, int(position)]))
        if rng.random() < self.augment_fraction:
            return arr, corner, draw_augmentation(rng, self.patch_size, self.spacing, **self.augment_kwargs)
        return arr, corner, None


# --------------------------------------------------------------------------- worker processes


class BatchWorkers:
    """``processes`` worker processes that build batches of ``source`` (a
    :class:`WindowBatches`, sent as :meth:`WindowBatches.plain`) into shared memory.

    :meth:`fill` may be called from several threads at once: each call takes a free worker,
    asks it for batch ``i`` of an epoch, and copies the batch out of the worker's slot. A
    worker's :class:`~t2lesion.errors.InputError` (a stored visit missing or malformed) is
    raised as one in the caller; any other failure, or a worker that died, as a RuntimeError
    with the worker's traceback or exit code. ``shm_dir``: a RAM-backed folder with room for
    one batch per worker (:data:`SHARED_MEMORY_DIR`). :meth:`close` (also on garbage
    collection and at exit) stops the workers."""

    def __init__(self, source: WindowBatches, processes: int, shm_dir: str | Path = SHARED_MEMORY_DIR):
        if processes < 1:
            raise ValueError(f"processes must be ≥ 1, got {processes}")
        self.processes = int(processes)
        self.shapes = source.batch_shapes
        sizes = [math.prod(s) for s in self.shapes]
        slot = sum(sizes)
        need = shared_memory_bytes(self.shapes, self.processes)
        folder = Path(shm_dir)
        free = shutil.disk_usage(folder).free if folder.is_dir() else 0
        if free < need:
            raise RuntimeError(f"the loader's {self.processes} worker processes need {need / 2**20:.0f} MiB of shared "
                               f"memory in {folder}, which has {free / 2**20:.0f} MiB free: use fewer "
                               f"training.workers, set training.loader: threads, or give {folder} more room")
        fd, path = tempfile.mkstemp(prefix="t2lesion-batches-", dir=folder)
        self._procs: list[subprocess.Popen] = []
        self._pipes: list[tuple] = []
        self._finalize = weakref.finalize(self, _stop, self._procs, self._pipes)
        try:
            try:
                os.ftruncate(fd, need)
            finally:
                os.close(fd)
            memory = np.memmap(path, np.float32, "r+", shape=(self.processes, slot))
            self._slots = [(memory[k, :sizes[0]].reshape(self.shapes[0]), memory[k, sizes[0]:].reshape(self.shapes[1]))
                           for k in range(self.processes)]
            setup = pickle.dumps({"source": source.plain(), "path": path, "slot": slot, "shapes": self.shapes},
                                 pickle.HIGHEST_PROTOCOL)
            for k in range(self.processes):
                self._start(k, setup)
            for k in range(self.processes):
                self._receive(k, "starting")
        except BaseException:
            self.close()
            raise
        finally:
            os.unlink(path)  # every worker that started has mapped it: the memory lives on while mapped
        self._free: queue.Queue[int] = queue.Queue()
        for k in range(self.processes):
            self._free.put(k)
        self._broken: str | None = None

    def _start(self, k: int, setup: bytes) -> None:
        to_child, from_child = os.pipe(), os.pipe()
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"  # one core per worker
        for var, value in _WORKER_MALLOC.items():
            env.setdefault(var, value)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        try:  # a worker's messages go where this process's stderr goes now (a rule's log)
            stderr = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            stderr = None
        proc = subprocess.Popen([sys.executable, "-c", "from t2lesion.unet.batches import serve; serve()",
                                 str(to_child[0]), str(from_child[1]), str(k)],
                                pass_fds=(to_child[0], from_child[1]), env=env, stdin=subprocess.DEVNULL,
                                stderr=stderr)
        os.close(to_child[0])
        os.close(from_child[1])
        self._procs.append(proc)
        self._pipes.append((os.fdopen(to_child[1], "wb"), os.fdopen(from_child[0], "rb")))
        try:
            _send(self._pipes[k][0], setup)
        except OSError:  # it died before reading its setup
            raise self._died(k, "starting") from None

    def _died(self, k: int, doing: str) -> RuntimeError:
        try:
            code = self._procs[k].wait(timeout=10)
        except subprocess.TimeoutExpired:  # its pipe broke, yet it runs: stop it
            self._procs[k].kill()
            code = self._procs[k].wait()
        return RuntimeError(f"loader worker process {k} (pid {self._procs[k].pid}) exited with code {code} "
                            f"while {doing}; its messages are in this job's log above")

    def _receive(self, k: int, doing: str):
        try:
            status, detail = pickle.loads(_read(self._pipes[k][1]) or b"")
        except (EOFError, OSError, pickle.UnpicklingError):
            raise self._died(k, doing) from None
        if status == "input":
            raise InputError(detail)
        if status == "error":
            raise RuntimeError(f"loader worker process {k} failed while {doing}:\n{detail}")
        return detail

    def fill(self, epoch: int, i: int, x: np.ndarray, t: np.ndarray) -> None:
        """Batch ``i`` of epoch ``epoch``, built by a worker, copied into ``x`` and ``t``."""
        k = self._free.get()
        doing = f"building batch {i} of epoch {epoch}"
        try:
            if self._broken:
                raise RuntimeError(self._broken)
            try:
                _send(self._pipes[k][0], pickle.dumps((int(epoch), int(i))))
            except OSError:
                raise self._died(k, doing) from None
            self._receive(k, doing)
            np.copyto(x, self._slots[k][0])
            np.copyto(t, self._slots[k][1])
        except InputError:
            raise
        except BaseException as exc:
            # a worker's state is unknown after anything else: no further batches, and every
            # caller waiting for a worker gets this error rather than waiting for ever
            self._broken = self._broken or str(exc)
            raise
        finally:
            self._free.put(k)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._finalize()

    def __enter__(self) -> BatchWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shared_memory_bytes(shapes, processes: int) -> int:
    """The shared memory that ``processes`` workers need for batches of ``shapes`` (x and t, as
    :attr:`WindowBatches.batch_shapes`): one float32 batch each."""
    return int(processes) * sum(math.prod(s) for s in shapes) * 4


def _send(stream, payload: bytes) -> None:
    stream.write(len(payload).to_bytes(8, "little"))
    stream.write(payload)
    stream.flush()


def _read(stream) -> bytes | None:
    head = stream.read(8)
    if len(head) < 8:
        return None
    return stream.read(int.from_bytes(head, "little"))


def _stop(procs: list[subprocess.Popen], pipes: list[tuple]) -> None:
    for tx, rx in pipes:
        for stream in (tx, rx):
            try:
                stream.close()  # a worker exits when its pipe closes
            except OSError:
                pass
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve(argv: Sequence[str] | None = None) -> int:
    """A worker process of :class:`BatchWorkers`: ``argv`` = the read and write ends of its
    pipes and its slot. Reads its setup, maps its slot, then builds the batches it is asked
    for until the pipe closes."""
    rfd, wfd, k = (int(a) for a in (sys.argv[1:] if argv is None else argv))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle
    with os.fdopen(rfd, "rb") as rx, os.fdopen(wfd, "wb") as tx:
        def reply(status, detail=None):
            _send(tx, pickle.dumps((status, detail), pickle.HIGHEST_PROTOCOL))

        try:
            setup = pickle.loads(_read(rx))
            source: WindowBatches = setup["source"]
            shapes, slot = setup["shapes"], setup["slot"]
            memory = np.memmap(setup["path"], np.float32, "r+", offset=k * slot * 4, shape=(slot,))
            nx = math.prod(shapes[0])
            x, t = memory[:nx].reshape(shapes[0]), memory[nx:].reshape(shapes[1])
        except Exception:
            reply("error", traceback.format_exc())
            return 1
        reply("ready", os.getpid())
        while (message := _read(rx)) is not None:
            epoch, i = pickle.loads(message)
            try:
                source.set_epoch(epoch)
                source.fill(i, x, t)
            except InputError as exc:
                reply("input", str(exc))
            except Exception:
                reply("error", traceback.format_exc())
            else:
                reply("ok")
    return 0


__all__ = ["BatchWorkers", "SHARED_MEMORY_DIR", "WindowBatches", "serve", "shared_memory_bytes"]
