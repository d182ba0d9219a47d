"""``python -m t2lesion.synth``: see :func:`t2lesion.synth.cli.main`."""

import sys

from t2lesion.synth.cli import main

sys.exit(main())
