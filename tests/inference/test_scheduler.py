"""run_batch with a pool: each image of a batch is decoded and preprocessed as a task of its own, the
prepared images are classified in runs that the pool's threads take as they come free, ending on single
images, answers stay in request order, and the engine runs one intra-op thread (issue 13)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from shared.core.errors import ImageError
from shared.core.settings import Settings
from shared.inference.model import ImageLoader, InferenceOptions
from shared.inference.scheduler import INFERENCE_RUN, model_threads, run_batch, run_size
from tests.conftest import jpeg_bytes
from tests.modelfactory import tiny_bundle


def test_engine_threads_follow_the_pool() -> None:
    cores = os.cpu_count() or 1
    assert model_threads(Settings(engine_threads=3)) == 3
    assert model_threads(Settings(engine_threads=3, decode_threads=4)) == 3
    assert model_threads(Settings(decode_threads=1)) is None
    assert model_threads(Settings(decode_threads=2)) == 1
    assert model_threads(Settings()) == (1 if cores > 1 else None)


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
    options = InferenceOptions(top_k=3)
    alone = run_batch(sample_engine, loaders, options)
    threads.clear()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="part") as pool:
        parallel = run_batch(sample_engine, loaders, options, pool=pool)
    assert threads and all(name.startswith("part") for name in threads)
    assert [o.errors for o in parallel] == [o.errors for o in alone]
    assert [o.errors for o in parallel][1] == ("image data is not valid base64",)
    for a, p in zip(alone, parallel, strict=True):
        if a.data is None:
            assert p.data is None
            continue
        assert p.data is not None and p.data["label"] == a.data["label"]
        assert p.data["confidence"] == pytest.approx(a.data["confidence"], abs=1e-4)


def returning(data: bytes) -> ImageLoader:
    return lambda: data


def run_sizes(images: int, workers: int) -> list[int]:
    sizes = []
    while images:
        sizes.append(run_size(images, workers))
        images -= sizes[-1]
    return sizes


@pytest.mark.parametrize(
    ("images", "workers", "sizes"),
    [
        (16, 2, [2] * 7 + [1, 1]),  # a skillset's usual batchSize on two cores
        (5, 2, [2, 2, 1]),
        (2, 2, [1, 1]),
        (1, 2, [1]),
        (0, 2, []),
        (8, 1, [2, 2, 2, 2]),  # one thread: nothing to balance, and the last run of 2 is cheaper than two of 1
        (9, 1, [2, 2, 2, 2, 1]),
        (6, 4, [2, 1, 1, 1, 1]),
    ],
)
def test_runs_are_of_inference_run_images_and_the_last_ones_single(images: int, workers: int, sizes: list[int]) -> None:
    assert run_sizes(images, workers) == sizes
    assert all(size <= INFERENCE_RUN for size in sizes)


def test_a_thread_classifies_prepared_images_while_another_still_prepares_the_last(
    sample_engine: Any, photos: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last image cannot load until an inference run has happened: a thread that ends its last image
    # must classify the prepared ones rather than wait for the others (no barrier between the phases).
    ran = threading.Event()
    scores = sample_engine.scores

    def recording(batch: Any) -> Any:
        ran.set()
        return scores(batch)

    data = jpeg_bytes(photos[0].resize((320, 240)))
    waited: list[bool] = []

    def last() -> bytes:
        waited.append(ran.wait(timeout=30))  # a guard against hanging: False is the failure
        return data

    loaders = [returning(data)] * 15 + [last]
    monkeypatch.setattr(sample_engine, "scores", recording)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="part") as pool:
        pooled = run_batch(sample_engine, loaders, InferenceOptions(), pool=pool, workers=2)
    assert waited == [True]
    assert all(o.errors == () and o.data is not None for o in pooled)


def test_a_pooled_batch_is_decoded_per_image_then_classified_in_runs_ending_on_single_images(
    sample_engine: Any, photos: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[tuple[int, str]] = []
    scores = sample_engine.scores

    def recording(batch: Any) -> Any:
        runs.append((len(batch), threading.current_thread().name))
        return scores(batch)

    data = [jpeg_bytes(photo.resize((320, 240))) for photo in photos]
    loaders = [returning(data[i % len(data)]) for i in range(16)]
    alone = run_batch(sample_engine, loaders, InferenceOptions())
    monkeypatch.setattr(sample_engine, "scores", recording)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="part") as pool:
        pooled = run_batch(sample_engine, loaders, InferenceOptions(), pool=pool, workers=2)
    assert sorted(size for size, _ in runs) == [1, 1] + [INFERENCE_RUN] * 7
    assert all(name.startswith("part") for _, name in runs)
    for a, p in zip(alone, pooled, strict=True):
        assert a.data is not None and p.data is not None
        assert p.data["predictions"][0]["label"] == a.data["predictions"][0]["label"]
        assert p.data["confidence"] == pytest.approx(a.data["confidence"], abs=1e-4)


def test_a_model_with_a_fixed_batch_of_one_is_run_image_by_image(tmp_path: Path, photos: list[Image.Image]) -> None:
    from shared.bundle.loader import load_bundle
    from shared.inference.factory import open_model

    fixed = open_model(load_bundle(tiny_bundle(tmp_path / "fixed", batch=1)))
    dynamic = open_model(load_bundle(tiny_bundle(tmp_path / "dynamic")))
    loaders = [returning(jpeg_bytes(photo.resize((64, 48)))) for photo in photos] * 2
    with ThreadPoolExecutor(max_workers=2) as pool:
        for kwargs in ({}, {"pool": pool, "workers": 2}):
            got = run_batch(fixed, loaders, InferenceOptions(), **kwargs)  # type: ignore[arg-type]
            expected = run_batch(dynamic, loaders, InferenceOptions(), **kwargs)  # type: ignore[arg-type]
            assert all(o.errors == () for o in got)
            assert [o.data and o.data["predictions"] for o in got] == [
                o.data and o.data["predictions"] for o in expected
            ]


@pytest.mark.parametrize("pattern", ["x", "b", "bbbb", "xxxb", "bxxxxx", "xbxbxbx"])
def test_images_that_fail_to_prepare_anywhere_in_a_batch_leave_the_others_answered(
    sample_engine: Any, photos: list[Image.Image], pattern: str
) -> None:
    # x: a good image, b: one whose data is bad. Failures take no part in any run, wherever they fall, the
    # last image and all of them included.
    data = jpeg_bytes(photos[0].resize((320, 240)))

    def bad() -> bytes:
        raise ImageError("image data is not valid base64")

    loaders = [returning(data) if c == "x" else bad for c in pattern]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="part") as pool:
        pooled = run_batch(sample_engine, loaders, InferenceOptions(), pool=pool, workers=2)
    assert [o.errors for o in pooled] == [() if c == "x" else ("image data is not valid base64",) for c in pattern]
    assert [o.data is not None for o in pooled] == [c == "x" for c in pattern]


def test_batches_from_concurrent_requests_share_the_pool_and_each_gets_its_own_answers(
    sample_engine: Any, photos: list[Image.Image]
) -> None:
    # The requests share the pool's threads: a thread that ends an image of one request may classify that
    # request's images while the others' decodes wait in the queue. Every request must still get exactly its
    # own answers, in its own order.
    data = [jpeg_bytes(photo.resize((320, 240))) for photo in photos]

    def bad() -> bytes:
        raise ImageError("image data is not valid base64")

    requests = [
        [returning(data[(i + r) % len(data)]) if (i + r) % 5 else bad for i in range(3 + 2 * r)] for r in range(6)
    ]
    expected = [run_batch(sample_engine, loaders, InferenceOptions(top_k=2)) for loaders in requests]
    with (
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="part") as pool,
        ThreadPoolExecutor(max_workers=len(requests)) as callers,
    ):
        answers = list(
            callers.map(
                lambda loaders: run_batch(sample_engine, loaders, InferenceOptions(top_k=2), pool=pool, workers=2),
                requests,
            )
        )
    for got, want in zip(answers, expected, strict=True):
        assert [o.errors for o in got] == [o.errors for o in want]
        assert [o.data and o.data["label"] for o in got] == [o.data and o.data["label"] for o in want]
