"""``t2lesion-check-config``: a config checked as the workflow checks it at start (README,
"Running on your data")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from t2lesion.config import check_config, merge_config, read_yaml
from t2lesion.errors import InputError
from t2lesion.plan import Plan


def main(argv: list[str] | None = None) -> int:
    """``t2lesion-check-config CONFIG.yaml…``: the YAML (file, line, column) and schema check of
    configs, merged in order as ``snakemake --configfile`` does, then the workflow's start-up
    checks (trials, BIDS names and tables, fold models), with one line per problem and the
    start-up warnings."""
    parser = argparse.ArgumentParser(prog="t2lesion-check-config", description=main.__doc__)
    parser.add_argument("configs", nargs="+", help="config files, in --configfile order")
    args = parser.parse_args(argv)
    config: dict = {}
    try:
        for path in args.configs:
            if not Path(path).is_file():
                raise InputError(f"{path}: config file not found")
            merge_config(config, read_yaml(path))
        check_config(config)
        _, warnings = Plan.from_config(config)
    except InputError as exc:
        print(exc, file=sys.stderr)
        return 1
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{', '.join(args.configs)}: valid ({len(config['trials'])} trial(s))")
    return 0
