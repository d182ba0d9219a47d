"""Command line: ``python -m t2lesion.synth`` and the ``t2lesion-synth`` console script."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from t2lesion.errors import InputError
from t2lesion.synth.params import SynthParams
from t2lesion.synth.trial import generate_trial


def _parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m t2lesion.synth",
        description="Generate a synthetic MS trial (BIDS images, GT masks, clinical tables) with its truth.",
    )
    ap.add_argument("out_root", help="output folder; gets bids/ and truth/")
    ap.add_argument("--config", help="YAML/JSON file with SynthParams keys (flat, or under 'synthetic:')")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--subjects-per-arm", type=int)
    ap.add_argument("--weeks", type=int, nargs="+")
    ap.add_argument("--template-resolution", type=int, choices=(1, 2), dest="template_resolution_mm")
    ap.add_argument("--n-jobs", type=int, default=1, help="parallel subjects (processes)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        d: dict = {}
        if args.config:
            import yaml

            path = Path(args.config)
            if not path.is_file():
                raise InputError(f"{path}: file not found")
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise InputError(f"{path}: not valid YAML/JSON ({exc})") from None
            if not isinstance(loaded, dict):
                raise InputError(f"{path}: expected a mapping of synthetic-trial parameters")
            d = dict(loaded.get("synthetic", loaded))
        for key in ("seed", "subjects_per_arm", "weeks", "template_resolution_mm"):
            v = getattr(args, key)
            if v is not None:
                d[key] = v
        params = SynthParams.from_dict(d)
        summary = generate_trial(args.out_root, params, n_jobs=args.n_jobs, progress=not args.quiet)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
