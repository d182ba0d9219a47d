"""Put on PYTHONPATH by tests/test_end_to_end.py's run (with ``T2LESION_IMPORT_AUDIT`` naming a
folder): Python imports this at start-up in every process of the run, Snakemake's job scripts and
their worker processes included. At exit each writes the top-level modules it imported, with
its script and parent process, so the test can check them against the rule's conda env.
Nothing here changes what a process does."""

import atexit
import os
import sys


def _write() -> None:
    import json

    folder = os.environ.get("T2LESION_IMPORT_AUDIT")
    if not folder or not os.path.isdir(folder):
        return
    record = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "script": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "",
        "modules": sorted({name.split(".")[0] for name in list(sys.modules)}),
    }
    with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as fh:
        json.dump(record, fh)


atexit.register(_write)
