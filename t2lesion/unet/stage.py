"""The U-Net rules' library side: what each Snakemake job of rules/train.smk and
rules/infer.smk does, file in, file out. The workflow scripts only unpack ``snakemake``.

Keras is imported inside the functions that need it, after :func:`t2lesion.gpu.lease` has
chosen a device (the backend reads ``CUDA_VISIBLE_DEVICES`` once, at import).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from t2lesion.errors import InputError

log = logging.getLogger(__name__)


#: Config keys that set how fast a job runs, not what it computes: the loader's workers, threads
#: or processes, and the CPU threads of a training job (a fold's batches are the same whatever
#: they are, :mod:`t2lesion.unet.batches`); an inference job's threads and its share of the visits. They
#: stay out of the train, calibrate and infer rules' params and out of the checkpoint folder's
#: settings key: changing them never retrains a finished fold nor repredicts a visit. The
#: optional uncertainty maps an inference job writes are with them: they are its outputs, not
#: its numbers (a map added back is missing, and only then its job reruns).
TRAINING_SPEED_KEYS = ("workers", "loader", "threads")
INFERENCE_SPEED_KEYS = ("threads", "visits_per_job", "uncertainty_maps")


def training_params(training: Mapping) -> dict:
    """The ``training:`` section without :data:`TRAINING_SPEED_KEYS` (the train rule's params)."""
    return {k: v for k, v in training.items() if k not in TRAINING_SPEED_KEYS}


def train_job_threads(training: Mapping) -> int:
    """Cores a train job takes: ``training.threads`` for the model, and one per loader worker
    process (``training.workers`` with ``loader: processes``), so that Snakemake and SLURM
    reserve the cores the processes use."""
    threads = int(training.get("threads", 1))
    if training.get("loader", "threads") == "processes":
        threads += max(1, int(training.get("workers", 1)))
    return threads


def inference_params(inference: Mapping) -> dict:
    """The ``inference:`` section without :data:`INFERENCE_SPEED_KEYS` (the calibrate and infer
    rules' params)."""
    return {k: v for k, v in inference.items() if k not in INFERENCE_SPEED_KEYS}


def training_participants(validated: str | Path, participants: str | Path, arms: Sequence[str]) -> pd.DataFrame:
    """Participants of a training trial with at least one usable GT visit, and their arm."""
    from t2lesion.stats.inputs import read_participants

    visits = pd.read_csv(validated, sep="\t", dtype={"participant_id": str, "session": str, "excluded": str},
                         keep_default_na=False)
    usable = visits[(visits["excluded"] == "") & visits["has_gt"].astype(str).str.lower().isin(["true", "1"])]
    people = read_participants(participants, arms)
    people = people[people["participant_id"].isin(set(usable["participant_id"]))]
    if people.empty:
        raise InputError(f"{validated}: no visit with a GT mask to train on")
    return people[["participant_id", "arm"]].reset_index(drop=True)


def run_fold_split(validated, participants, out, arms: Sequence[str], folds: int, seed: int) -> pd.DataFrame:
    from t2lesion.unet.folds import split_folds, write_folds

    people = training_participants(validated, participants, arms)
    df = split_folds(people, folds, seed)
    write_folds(df, out)
    for fold, part in df.groupby("fold"):
        log.info("fold %s: %d participants (%s)", fold, len(part), part["arm"].value_counts().to_dict())
    return df


def run_index(folds_tsv, store: Sequence[str | Path], outs: Sequence[str | Path], folds: Sequence[int],
              patch_size, overlap: float) -> pd.DataFrame:
    """One index TSV per fold: the lesion windows of that fold's visits (all of them GT visits)."""
    from t2lesion.unet.patches import build_index

    split = pd.read_csv(folds_tsv, sep="\t", dtype={"participant_id": str})
    fold_of = dict(zip(split["participant_id"], split["fold"]))
    rows = []
    for path in store:
        name = Path(path).stem  # sub-<id>_ses-<wNNN>
        sub, ses = name.split("_", 1)
        if sub not in fold_of:
            continue  # a participant left out of the split (no usable GT visit)
        rows.append({"participant_id": sub, "session": ses, "path": str(path), "fold": int(fold_of[sub])})
    index = build_index(pd.DataFrame(rows), tuple(patch_size), overlap)
    for fold, out in zip(folds, outs):
        part = index[index["fold"] == fold]
        if part.empty:
            raise InputError(f"{folds_tsv}: fold {fold} has no window with a lesion voxel to train or validate on")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        part.to_csv(out, sep="\t", index=False)
        log.info("fold %s: %d windows from %d visits", fold, len(part), part["path"].nunique())
    return index


def _settings_key(**settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_resume_dir(resume_dir: str | Path, **settings) -> Path:
    """The fold's checkpoint folder, emptied when it holds a run with other settings (a
    changed config must not resume someone else's training)."""
    folder = Path(resume_dir)
    key = _settings_key(**settings)
    stamp = folder / "settings.sha256"
    if folder.exists() and (not stamp.is_file() or stamp.read_text().strip() != key):
        log.warning("%s: checkpoints from other settings; starting this fold afresh", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")
    return folder


def run_train(index: Sequence[str | Path], fold: int, resume_dir, outputs: dict, model: dict, loss: dict,
              training: dict, seed: int, workers: int | None = None, loader: str | None = None) -> dict:
    """Train fold ``fold``: validate on every index file of that fold, train on the others.

    Writes ``outputs`` (model, last, history, curve) by copying from ``resume_dir``, where
    :func:`t2lesion.unet.train.train_fold` keeps its per-epoch checkpoints. ``workers``: how
    many batches the loader builds at once (config ``training.workers``; None:
    ``training["workers"]``, else 0); ``loader``: in ``threads`` or worker ``processes``
    (config ``training.loader``; None: ``training["loader"]``, else threads).
    :data:`TRAINING_SPEED_KEYS` in ``training`` are left out of the checkpoints' settings key.
    """
    from t2lesion.unet.data import PatchDataset
    from t2lesion.unet.hparams import fold_seed, split_model_section
    from t2lesion.unet.train import train_fold

    frames = [pd.read_csv(p, sep="\t", dtype={"participant_id": str}) for p in index]
    table = pd.concat(frames, ignore_index=True)
    val = table[table["fold"] == fold].reset_index(drop=True)
    trn = table[table["fold"] != fold].reset_index(drop=True)
    if val.empty or trn.empty:
        raise InputError(f"fold {fold}: {len(trn)} training and {len(val)} validation windows; both must be > 0")
    patch = tuple(model.get("patch_size", (32, 96, 96)))
    fseed = fold_seed(seed, fold, model.get("seed"))
    log.info("fold %s: %d training windows (%d participants), %d validation windows (%d participants); seed %d",
             fold, len(trn), trn["participant_id"].nunique(), len(val), val["participant_id"].nunique(), fseed)
    workers = int(training.get("workers", 0) if workers is None else workers)
    loader = str(training.get("loader", "threads") if loader is None else loader)
    if loader not in ("threads", "processes"):
        raise InputError(f"training.loader must be threads or processes, got {loader!r}")
    log.info("loader: %d batch(es) at once, in %s", max(1, workers),
             "worker processes over shared memory" if loader == "processes" else "threads")
    heads = split_model_section(model)[1].supervision_levels  # one target per supervised output
    train_ds = PatchDataset(trn, patch, batch_size=training["batch_size"], augment_fraction=training["augment_fraction"],
                            seed=fseed, shuffle=True, steps=training.get("steps_per_epoch"), n_outputs=heads,
                            workers=max(1, workers), use_multiprocessing=loader == "processes")
    val_ds = PatchDataset(val, patch, batch_size=training["batch_size"], augment_fraction=0.0, seed=fseed,
                          shuffle=False, n_outputs=heads)
    folder = prepare_resume_dir(resume_dir, model=model, loss=loss, training=training_params(training), seed=fseed,
                                index=[str(p) for p in index])
    try:
        result = train_fold(train_ds, val_ds, folder, model, loss, training, seed=fseed, log=log)
    finally:
        train_ds.close()
    for key, name in (("model", "model.keras"), ("last", "last.keras"), ("history", "history.tsv"),
                      ("curve", "training_curve.png")):
        shutil.copyfile(folder / name, outputs[key])
    return result


def held_out_visits(folds: Mapping[str, str | Path], visits: Sequence[Mapping], fold: int) -> list[dict]:
    """The visits of ``visits`` (dicts with ``trial`` and ``participant_id``) whose participant
    is in fold ``fold`` of their training trial's split (``folds``: trial -> folds.tsv): the
    visits fold ``fold``'s model validated on and never trained on."""
    from t2lesion.unet.folds import read_folds

    out = []
    for trial, path in folds.items():
        split = read_folds(path)
        members = set(split.loc[split["fold"] == int(fold), "participant_id"])
        out += [dict(v) for v in visits if v["trial"] == trial and v["participant_id"] in members]
    return out


def run_calibrate(model_path: str | Path, folds: Mapping[str, str | Path], visits: Sequence[Mapping], fold: int,
                  outputs: Mapping[str, str | Path], cfg: Mapping, seed: int,
                  channel_order: Sequence[str] | None = None) -> dict:
    """Rule calibrate: fold ``fold``'s threshold, chosen on its held-out visits
    (:func:`t2lesion.unet.threshold.calibrate_fold`); ``outputs``: threshold, curve, plot."""
    from t2lesion.unet.threshold import calibrate_fold

    held = held_out_visits(folds, visits, fold)
    if not held:
        raise InputError(f"fold {fold}: no GT visit of its participants in {', '.join(map(str, folds.values()))} "
                         f"to choose the threshold on")
    return calibrate_fold(model_path, held, fold, cfg, seed, outputs, channel_order=channel_order, logger=log)
