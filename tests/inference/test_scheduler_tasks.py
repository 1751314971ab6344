"""The batch scheduler knows no task: a model of a task it has never seen, implementing the model interface
(shared.inference.model.Model), is decoded, budgeted, batched, timed out and answered like the built-in ones."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.inference.images import DecodeBudget
from shared.inference.model import ImageInfo, ImageOutcome, InferenceOptions
from shared.inference.scheduler import INFERENCE_RUN, deadline_message, run_batch
from tests.conftest import SAMPLE_PHOTOS, encode


class Brightness:
    """A third task: the mean brightness of an 8x8 thumbnail, "run" in numpy, answered as `brightness`."""

    version = "brightness-1"
    task = "brightness"
    labels: tuple[str, ...] = ()
    input_shape = (3, 8, 8)
    draft_short_side = 8
    bundle: Any = None

    def __init__(self, max_run: int | None = None) -> None:
        self.max_run = max_run
        self.runs: list[tuple[str, int]] = []

    def default_threshold(self) -> float:
        return 0.0

    def prepare_bytes(self, width: int, height: int) -> int:
        return 4 * 8 * 8

    def prepare(self, image: Image.Image, out: np.ndarray) -> tuple[int, int]:
        out[...] = np.asarray(image.resize((8, 8)), dtype=np.float32).transpose(2, 0, 1) / 255
        return image.size

    def run(self, batch: np.ndarray) -> Sequence[float]:
        self.runs.append((threading.current_thread().name, len(batch)))
        return [float(x) for x in batch.mean(axis=(1, 2, 3))]

    def result(self, output: Any, context: Any, image: ImageInfo, options: InferenceOptions) -> ImageOutcome:
        warnings = ("dark",) if output < 0.2 else ()
        return ImageOutcome(data={"brightness": output, "size": list(context)}, warnings=warnings)


def photos() -> list[bytes]:
    return [encode(Image.open(p).convert("RGB"), "PNG") for p in SAMPLE_PHOTOS]


@pytest.mark.parametrize("pooled", [False, True], ids=["caller's thread", "pool"])
def test_a_new_task_goes_through_the_same_scheduler(pooled: bool) -> None:
    model = Brightness()
    loaders = [lambda data=data: data for data in photos()]
    loaders.insert(1, lambda: b"not an image")
    budget = DecodeBudget(64 << 20)
    if pooled:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="pool") as pool:
            outcomes = run_batch(model, loaders, InferenceOptions(), pool=pool, workers=2, budget=budget)
    else:
        outcomes = run_batch(model, loaders, InferenceOptions(), budget=budget)
    assert len(outcomes) == len(loaders)
    assert outcomes[1].data is None and outcomes[1].errors[0].startswith("data is not an image")
    sizes = [Image.open(p).size for p in SAMPLE_PHOTOS]
    answered = [o for i, o in enumerate(outcomes) if i != 1]
    assert [o.data["size"] for o in answered if o.data] == [list(size) for size in sizes]
    assert all(0.0 < o.data["brightness"] < 1.0 for o in answered if o.data)
    assert sum(size for _, size in model.runs) == len(SAMPLE_PHOTOS)
    if pooled:
        assert all(name.startswith("pool") and size <= INFERENCE_RUN for name, size in model.runs)
    else:
        assert model.runs == [(threading.current_thread().name, len(SAMPLE_PHOTOS))]
    assert budget.in_flight == 0


def test_a_model_that_takes_one_image_per_run_gets_one() -> None:
    model = Brightness(max_run=1)
    loaders = [lambda data=data: data for data in photos()]
    with ThreadPoolExecutor(max_workers=2) as pool:
        run_batch(model, loaders, InferenceOptions(), pool=pool, workers=2)
    run_batch(model, loaders, InferenceOptions())
    assert [size for _, size in model.runs] == [1] * (2 * len(loaders))


def test_the_deadline_and_a_failing_run_are_per_image_answers() -> None:
    model = Brightness()
    loaders = [lambda data=data: data for data in photos()]
    ticks = iter([0.0, 0.0, 5.0, 5.0, 5.0, 5.0])
    late = run_batch(model, loaders[:3], InferenceOptions(), deadline=1.0, budget_s=1.0, clock=lambda: next(ticks))
    assert late[0].data is not None
    assert [o.errors for o in late[1:]] == [(deadline_message(1.0),)] * 2

    def broken(batch: np.ndarray) -> Sequence[float]:
        raise RuntimeError("the runtime failed")

    model.run = broken  # type: ignore[method-assign]
    failed = run_batch(model, loaders, InferenceOptions())
    assert all(o.data is None and o.errors[0].startswith("internal error while classifying this image") for o in failed)
