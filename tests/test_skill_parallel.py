"""classify_batch with a pool: each part of a batch is decoded, preprocessed and classified on its own
thread, answers stay in request order, and the engine then runs one intra-op thread (issue 13)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from PIL import Image

from shared.errors import ImageError
from shared.settings import Settings
from shared.skill import ClassifyOptions, ImageLoader, classify_batch, engine_threads
from tests.conftest import jpeg_bytes


def test_engine_threads_follow_the_pool() -> None:
    cores = os.cpu_count() or 1
    assert engine_threads(Settings(engine_threads=3)) == 3
    assert engine_threads(Settings(engine_threads=3, decode_threads=4)) == 3
    assert engine_threads(Settings(decode_threads=1)) is None
    assert engine_threads(Settings(decode_threads=2)) == 1
    assert engine_threads(Settings()) == (1 if cores > 1 else None)


def test_parts_run_on_pool_threads_and_answers_keep_their_order(sample_engine: Any, photos: list[Image.Image]) -> None:
    threads: set[str] = set()

    def good(photo: Image.Image) -> ImageLoader:
        data = jpeg_bytes(photo.resize((640, 480)))

        def load() -> bytes:
            threads.add(threading.current_thread().name)
            return data

        return load

    def bad() -> bytes:
        raise ImageError("image data is not valid base64")

    loaders = [good(photos[0]), bad, good(photos[1]), good(photos[2]), bad, good(photos[3]), good(photos[0])]
    options = ClassifyOptions(top_k=3)
    alone = classify_batch(sample_engine, loaders, options)
    threads.clear()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="part") as pool:
        parallel = classify_batch(sample_engine, loaders, options, pool=pool)
    assert threads and all(name.startswith("part") for name in threads)
    assert [o.errors for o in parallel] == [o.errors for o in alone]
    assert [o.errors for o in parallel][1] == ("image data is not valid base64",)
    for a, p in zip(alone, parallel, strict=True):
        if a.data is None:
            assert p.data is None
            continue
        assert p.data is not None and p.data["label"] == a.data["label"]
        assert p.data["confidence"] == pytest.approx(a.data["confidence"], abs=1e-4)
