"""Training data loader (docs/DESIGN.md §6): :class:`PatchDataset`, the Keras face of
:class:`t2lesion.unet.batches.WindowBatches`: batches of windows read from the memory-mapped
visit arrays of :mod:`t2lesion.unet.patches`, a share of them augmented on the fly
(:mod:`t2lesion.unet.augment`), built in the training thread, in Keras' worker threads, or in
worker processes over shared memory (:class:`t2lesion.unet.batches.BatchWorkers`).

The epoch is set explicitly (``set_epoch``, or the ``epoch_callback()`` Keras callback, which
runs before Keras starts the epoch's workers); ``on_epoch_end`` changes nothing, because Keras
calls it more than once per epoch. Pass ``shuffle=False`` to ``model.fit`` (its default True
would re-order the batches with Python's unseeded ``random``); this dataset shuffles itself.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from t2lesion.unet.augment import SPACING_ZYX
from t2lesion.unet.batches import SHARED_MEMORY_DIR, BatchWorkers, WindowBatches


class PatchDataset(WindowBatches, keras.utils.PyDataset):
    """Batches ``(x, (t,) * n_outputs)`` of :class:`~t2lesion.unet.batches.WindowBatches`
    (the same arguments): x (B, z, y, x, 3), t (B, z, y, x, 2), the same target for every
    supervision output.

    ``workers``: how many batches are built at once, ahead of the training step; 0 or 1 builds
    each in the training thread. ``use_multiprocessing``: build them in ``workers`` worker
    processes that write into shared memory (in ``shm_dir``) while Keras' threads, one per
    process (two at least, so that one process works ahead), wait for them; else in Keras'
    worker threads. Not Keras' own process pool, which pickles every batch through a pipe.
    The batches are the same bits either way. :meth:`close` stops the processes.
    """

    def __init__(self, index: pd.DataFrame | str | Path, patch_size, batch_size: int = 10,
                 augment_fraction: float = 0.5, seed: int = 0, shuffle: bool = True, n_outputs: int = 3,
                 workers: int = 1, use_multiprocessing: bool = False, steps: int | None = None,
                 spacing: Sequence[float] = SPACING_ZYX, augment_kwargs: dict | None = None,
                 max_queue_size: int = 10, shm_dir: str | Path = SHARED_MEMORY_DIR):
        WindowBatches.__init__(self, index, patch_size, batch_size=batch_size, augment_fraction=augment_fraction,
                               seed=seed, shuffle=shuffle, steps=steps, spacing=spacing, augment_kwargs=augment_kwargs)
        if n_outputs < 1:
            raise ValueError(f"n_outputs must be ≥ 1, got {n_outputs}")
        self.n_outputs = int(n_outputs)
        self.processes = max(1, int(workers)) if use_multiprocessing else 0
        self.shm_dir = str(shm_dir)
        keras.utils.PyDataset.__init__(self, workers=max(2, self.processes) if self.processes else workers,
                                       use_multiprocessing=False, max_queue_size=max_queue_size)
        self._workers_lock = threading.Lock()
        self._batch_workers: BatchWorkers | None = None

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_workers_lock", None)
        state.pop("_batch_workers", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._workers_lock = threading.Lock()
        self._batch_workers = None

    def on_epoch_end(self):
        # Keras calls this more than once per epoch (EpochIterator.reset); the epoch is set
        # explicitly by set_epoch / epoch_callback instead.
        pass

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A Keras callback that calls ``set_epoch(epoch)`` at each epoch's start (also right
        after resuming at ``initial_epoch``), before Keras starts the loader's workers."""
        return _SetEpoch(self)

    def __getitem__(self, i: int):
        """Batch ``i`` of the current epoch (:meth:`~t2lesion.unet.batches.WindowBatches.fill`)."""
        if self.processes:
            self.check_batch(i)
            x, t = (np.empty(s, np.float32) for s in self.batch_shapes)
            self.batch_workers().fill(self.epoch, i, x, t)
        else:
            x, t = self.batch(i)
        return x, (t,) * self.n_outputs

    def batch_workers(self) -> BatchWorkers:
        """The worker processes, started at the first call."""
        with self._workers_lock:
            if self._batch_workers is None:
                self._batch_workers = BatchWorkers(self, self.processes, self.shm_dir)
            return self._batch_workers

    def close(self) -> None:
        """Stop the worker processes, if any (a later batch starts them again)."""
        with self._workers_lock:
            if self._batch_workers is not None:
                self._batch_workers.close()
                self._batch_workers = None


class _SetEpoch(keras.callbacks.Callback):
    def __init__(self, dataset: PatchDataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch)


__all__ = ["PatchDataset"]
