"""`python -m shared COMMAND`, and the `automl-skill` console script (pyproject.toml)."""

from __future__ import annotations

import sys


def run() -> None:
    """Run the command line; exits with its status."""
    if sys.argv[1:2] == ["serve"]:
        # Before the CLI's imports (ONNX Runtime, numpy, Pillow): the Blob model store's SDK import and
        # download run beside them (see shared/modelstore/prefetch.py).
        from shared.modelstore import prefetch

        prefetch.start()

    from shared.cli import main

    invoked = sys.argv[0]
    prog = "python -m shared" if invoked.endswith("__main__.py") or not invoked else invoked.rsplit("/", 1)[-1]
    sys.exit(main(prog=prog))


if __name__ == "__main__":
    run()
