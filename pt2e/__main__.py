"""``python -m pt2e``: the ``pt2e`` command (:mod:`lowering.cli`).

The command joins the pipeline to the backends through :mod:`lowering.backends`, so
it lives in ``lowering``; this entry point only forwards to it and is never imported
by the library itself.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from lowering.cli import main

    sys.exit(main())
