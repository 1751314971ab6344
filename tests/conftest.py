from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tests.modelfactory import tiny_bundle

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SAMPLE_PHOTOS = sorted(p for p in SAMPLES.iterdir() if p.suffix in {".png", ".jpg"})


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photos() -> list[Image.Image]:
    """The committed sample photos, decoded to RGB."""
    return [Image.open(p).convert("RGB") for p in SAMPLE_PHOTOS]


@pytest.fixture(scope="session")
def large_jpeg(photos: list[Image.Image]) -> bytes:
    """A real photo re-encoded at 2000x1500, the size of Azure AI Search's normalized images."""
    return jpeg_bytes(photos[0].resize((2000, 1500), Image.Resampling.BICUBIC))


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path / "tiny")


@pytest.fixture(scope="session")
def sample_engine():  # type: ignore[no-untyped-def]
    from shared.bundle.layout import SAMPLE_BUNDLE
    from shared.bundle.loader import load_bundle
    from shared.inference.factory import open_model

    return open_model(load_bundle(SAMPLE_BUNDLE))


def preloaded_holder(engine):  # type: ignore[no-untyped-def]
    from shared.modelstore.holder import ModelHolder
    from shared.modelstore.source import FolderSource

    return ModelHolder(FolderSource(Path("sample (test)")), lambda path: engine)


@pytest.fixture
def install_service(sample_engine):  # type: ignore[no-untyped-def]
    """Install a SkillService with given settings (and the sample engine) as the process's service."""
    from shared.core.settings import Settings
    from shared.skill import service as app

    def install(holder=None, clock=None, **settings):  # type: ignore[no-untyped-def]
        kwargs = {"clock": clock} if clock is not None else {}
        service = app.SkillService(Settings(**settings), holder or preloaded_holder(sample_engine), **kwargs)
        app.reset_service(service)
        return service

    yield install
    app.reset_service(None)


@pytest.fixture(scope="session")
def azurite():  # type: ignore[no-untyped-def]
    """A real Azurite for the whole test session, on a free loopback port, stopped at the end."""
    from tests.azurite import Azurite

    server = Azurite().start()
    yield server
    server.close()


@pytest.fixture
def blob_settings(azurite, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Settings for a fresh container on the session's Azurite and an empty cache."""
    import uuid

    from shared.core.settings import Settings

    return Settings(
        blob_connection_string=azurite.connection_string,
        blob_container=f"models-{uuid.uuid4().hex[:12]}",
        cache_dir=tmp_path / "cache",
        poll_s=1.0,
    )


@pytest.fixture
def own_azurite():  # type: ignore[no-untyped-def]
    """An Azurite of the test's own, which it may stop (an outage) without touching the session's."""
    from tests.azurite import Azurite

    server = Azurite().start()
    yield server
    server.close()


@pytest.fixture
def store(blob_settings):  # type: ignore[no-untyped-def]
    """The model store on the test's own container (created) of the session's Azurite."""
    from shared.modelstore.blobstore import BlobModelStore

    found = BlobModelStore.from_settings(blob_settings)
    assert found is not None
    found.ensure_container()
    return found


PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@pytest.fixture
def search_stubs(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Start stand-in search services (tests/searchstub.py) on 127.0.0.1, reached without a proxy:
    `search_stubs(key=..., token=..., pipeline=True)`; each is closed at the end of the test. `pipeline`
    adds the data source, index, skillset and indexer that search-setup creates."""
    from tests.searchstub import SearchStub

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    started: list[SearchStub] = []

    def start(*, pipeline: bool = False, **options: str | None) -> SearchStub:
        stub = SearchStub(**options).start()  # type: ignore[arg-type]
        started.append(stub)
        if pipeline:
            stub.add_pipeline()
        return stub

    yield start
    for stub in started:
        stub.close()


@pytest.fixture
def dev_server(blob_settings):  # type: ignore[no-untyped-def]
    """The dev server on a free loopback port over a service reading the test's Blob container."""
    import threading

    from shared.cli.devserver import make_server
    from shared.skill import service as app

    service = app.SkillService(blob_settings)
    app.reset_service(service)
    httpd = make_server(blob_settings, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    yield f"http://{host!s}:{port}", service
    httpd.shutdown()
    httpd.server_close()
    app.reset_service(None)


# A test that uses one of these fixtures, itself or through another fixture, starts a service: it is an
# integration test (`pytest -m "not integration"` leaves it out). Modules that start processes or convert
# models with torch say so with `pytestmark = pytest.mark.integration`.
SERVICE_FIXTURES = frozenset({"azurite", "own_azurite", "search_stubs", "dev_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
