"""Compare fast JPEG decoding (Pillow `draft`) with AutoML's exact pipeline on real photos.

Each photo is re-encoded as a 2000x1500 JPEG (the size of Azure AI Search's normalized images), then
classified twice with the bundled sample model: full decode vs DCT-domain downscale. Prints top-1
agreement, the largest score difference over all classes, and decode+preprocess time per image.

    .venv/bin/python scripts/measure_draft.py samples ../shared/data/seed-dogs
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.bundle.layout import SAMPLE_BUNDLE
from shared.bundle.loader import load_bundle
from shared.cli.classify import _image_files
from shared.core.limits import ImageLimits
from shared.inference.factory import open_model
from shared.inference.images import decode_image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--model", default=str(SAMPLE_BUNDLE))
    parser.add_argument("--size", default="2000x1500")
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    engine = open_model(load_bundle(args.model))
    limits = ImageLimits()
    agree = 0
    diffs: list[float] = []
    times: dict[str, list[float]] = {"exact": [], "draft": []}
    files = [p for _, p in _image_files(args.paths) if p is not None]
    for path in files:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(
            buffer, "JPEG", quality=90
        )
        data = buffer.getvalue()
        scores = {}
        for mode, draft in (("exact", None), ("draft", engine.preprocessing.resize)):
            start = time.perf_counter()
            decoded = decode_image(data, limits, draft_short_side=draft)
            batch = engine.preprocess_batch([decoded.image])
            times[mode].append(time.perf_counter() - start)
            scores[mode] = engine.scores(batch)[0]
        agree += int(np.argmax(scores["exact"]) == np.argmax(scores["draft"]))
        diffs.append(float(np.abs(scores["exact"] - scores["draft"]).max()))
    n = len(files)
    print(f"photos: {n} re-encoded at {width}x{height}")
    print(f"top-1 agreement draft vs exact: {agree}/{n}")
    print(f"largest score difference: {max(diffs):.4f} (median {statistics.median(diffs):.4f})")
    for mode, values in times.items():
        print(f"decode+preprocess {mode}: median {1000 * statistics.median(values):.1f} ms/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
