from __future__ import annotations

import sys

if sys.argv[1:2] == ["serve"]:
    # Before the CLI's imports (ONNX Runtime, numpy, Pillow): the Blob model store's SDK import and
    # download run beside them (see shared/modelstore/prefetch.py).
    from shared.modelstore import prefetch

    prefetch.start()

from shared.cli import main

sys.exit(main())
