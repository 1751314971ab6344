"""scripts/bench.py's command line and target verdicts (the figures themselves belong to `make bench`)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
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
        "bench.py: error: unknown section(s) speed; choose from throughput, cold, rss, blob, detection, segmentation, "
        "embedding"
    )


@pytest.mark.parametrize(
    ("name", "value", "verdict"),
    [
        ("skill_over_floor", 0.9, "target >= 0.9: met"),
        ("skill_over_floor", 0.899, "target >= 0.9: MISSED"),
        ("blob_cold_start_over_floor", 2.5, "target <= 2.5: met"),
        ("blob_cold_start_over_floor", 2.51, "target <= 2.5: MISSED"),
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


def test_interleaved_warms_up_then_keeps_every_sample_in_round_order() -> None:
    bench = load_bench()
    calls: list[str] = []

    def sampler(name: str, values: list[float]) -> object:
        def sample() -> float:
            calls.append(name)
            return values.pop(0)

        return sample

    samples = bench.interleaved(
        {"a": (sampler("a", [9.0, 9.0, 3.0, 1.0, 2.0, 5.0]), 2), "b": (sampler("b", [9.0, 9.0, 4.0, 6.0]), 1)},
        rounds=2,
    )
    assert bench.WARMUP == 2
    assert calls == ["a", "a", "b", "b", "a", "a", "b", "a", "a", "b"]
    assert samples == {"a": [3.0, 1.0, 2.0, 5.0], "b": [4.0, 6.0]}
    assert bench.medians(samples) == {"a": 2.5, "b": 5.0}


def test_the_floor_adds_the_cores_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_bench()
    # Two cores, one 25% slower: 0.010 s and 0.0125 s per image over the phases.
    per_phase = {"cpu0": [0.001, 0.0005, 0.004, 0.0015, 0.003], "cpu1": [0.00125, 0.000625, 0.005, 0.001875, 0.00375]}
    cores = [0, 1]
    seconds = {
        bench.floor_key(core, phase): per_phase[f"cpu{core}"][i]
        for core in cores
        for i, phase in enumerate(bench.PHASES)
    }
    monkeypatch.setattr(bench, "floor_cores", lambda: cores)
    by_core, costs, rate = bench.floor_of(seconds, 2)
    assert by_core == pytest.approx({0: 0.010, 1: 0.0125})
    assert costs["decode"] == pytest.approx(0.0045)
    assert rate == pytest.approx(1 / 0.010 + 1 / 0.0125)  # 180 images/s, not 2 / 0.01125 = 177.8


PHASE_NAMES = ("parse", "base64", "decode", "preprocess", "inference")


def counting_phases(body: bytes) -> tuple[dict[str, Callable[[], object]], int]:
    """A stand-in for bench.phase_calls (no model, no images): each phase sums the body's bytes."""
    return {name: (lambda: sum(body)) for name in PHASE_NAMES}, 4


def test_the_all_cores_floor_runs_one_pinned_process_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    bench = load_bench()
    assert bench.PHASES == PHASE_NAMES
    cores = bench.floor_cores()
    if cores == [None]:
        pytest.skip("no thread affinity on this platform")
    # The spawned processes import bench by name, as the bench's own run imports it as its main module.
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    floor = bench.AllCoresFloor(bytes(range(200)), calls_of=counting_phases)
    try:
        assert len(floor.pids) == len(cores) and os.getpid() not in floor.pids
        assert [os.sched_getaffinity(pid) for pid in floor.pids] == [{core} for core in cores]
        for _ in range(3):
            slowest = floor.sample()
            assert slowest >= 0.0
        assert set(floor.samples) == {bench.floor_key(core, name) for core in cores for name in PHASE_NAMES}
        assert all(len(values) == 3 and min(values) >= 0.0 for values in floor.samples.values())
    finally:
        floor.close()
    assert [proc.exitcode for proc in floor.procs] == [0] * len(cores)


def phases_failing_past_the_first_core(body: bytes) -> tuple[dict[str, Callable[[], object]], int]:
    import os

    if min(os.sched_getaffinity(0)) != 0:
        raise ValueError("no model here")
    return counting_phases(body)


def test_a_floor_process_that_dies_is_an_error_not_a_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    bench = load_bench()
    cores = bench.floor_cores()
    if cores == [None] or len(cores) < 2 or cores[0] != 0:
        pytest.skip("needs thread affinity and cores 0 and another")
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    raised: list[BaseException] = []

    def start() -> None:
        try:
            # The first core's process answers; the last one's dies while the others wait for it.
            bench.AllCoresFloor(b"{}", calls_of=phases_failing_past_the_first_core)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            raised.append(exc)

    # A daemon thread, joined with a generous bound, so that a regression fails here instead of hanging.
    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "AllCoresFloor waited for a process that had exited"
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError)
    assert str(raised[0]) == f"the floor's process for {bench.core_label(cores[1])} exited; its error is above"


def test_the_docs_name_each_bench_line_by_the_letter_bench_prints() -> None:
    """Every "`make bench` line (x)" of docs/ names a line whose label bench.py prints and documents, about the
    same thing: detection.md's (h) is the detection line."""
    import re

    source = (ROOT / "scripts" / "bench.py").read_text(encoding="utf-8")
    printed = dict(re.findall(r'"\(([a-z])\) ([a-z]+)', source))
    cited = [
        (page.name, letter, page.read_text(encoding="utf-8"))
        for page in sorted((ROOT / "docs").glob("*.md"))
        for letter in re.findall(r"`make bench` line \(([a-z])\)", page.read_text(encoding="utf-8"))
    ]
    assert cited, "no page cites a bench line"
    for name, letter, _ in cited:
        assert letter in printed, f"{name} cites line ({letter}), which bench.py does not print"
    assert printed["h"] == "detection"
    assert ("detection.md", "h") in {(name, letter) for name, letter, _ in cited}
