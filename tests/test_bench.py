"""scripts/bench.py's command line and target verdicts (the figures themselves belong to `make bench`)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from tests.conftest import ROOT


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)
    return module


def test_sections_and_quick() -> None:
    bench = load_bench()
    args = bench.parse_args(["--quick", "--only", "throughput, blob"])
    assert args.quick and args.sections == {"throughput", "blob"}
    assert bench.parse_args([]).sections == set(bench.SECTIONS)


def test_an_unknown_section_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    with pytest.raises(SystemExit) as exited:
        bench.parse_args(["--only", "throughput,speed"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "bench.py: error: unknown section(s) speed; choose from throughput, cold, rss, blob, detection"
    )


@pytest.mark.parametrize(
    ("name", "value", "verdict"),
    [
        ("skill_over_floor", 0.9, "target >= 0.9: met"),
        ("skill_over_floor", 0.899, "target >= 0.9: MISSED"),
        ("blob_cold_start_over_floor", 1.5, "target <= 1.5: met"),
        ("blob_cold_start_over_floor", 1.51, "target <= 1.5: MISSED"),
        ("skill_images_per_s", 50.0, ""),
    ],
)
def test_verdicts(name: str, value: float, verdict: str) -> None:
    assert load_bench().verdict(name, value) == verdict


def test_the_floor_pins_each_sample_to_its_core_and_gives_the_thread_back() -> None:
    import os
    import threading

    bench = load_bench()
    cores = bench.floor_cores()
    if cores == [None]:
        pytest.skip("no thread affinity on this platform")
    assert cores == sorted(os.sched_getaffinity(0))
    seen: list[set[int]] = []
    allowed = os.sched_getaffinity(0)

    def sampler() -> float:
        seen.append(os.sched_getaffinity(0))
        return 0.0

    for core in cores:
        bench.pinned(sampler, core)()
        assert os.sched_getaffinity(0) == allowed
    assert seen == [{core} for core in cores]
    # Only the calling thread is pinned: a thread already running keeps every core meanwhile.
    other: list[set[int]] = []
    asked, answered = threading.Event(), threading.Event()

    def report() -> None:
        asked.wait(10)
        other.append(os.sched_getaffinity(0))
        answered.set()

    thread = threading.Thread(target=report)
    thread.start()

    def look() -> float:
        asked.set()
        answered.wait(10)
        return 0.0

    bench.pinned(look, cores[0])()
    thread.join()
    assert other == [allowed]
