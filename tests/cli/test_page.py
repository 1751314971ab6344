"""The page at / of `serve`, in a real headless browser (Debian's chromium and chromedriver, through selenium):
a photo is picked or dropped, its label appears, boxes and masks are drawn over it, and the page fetches
nothing from anywhere but the server."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.cli.devserver import make_server
from shared.core.settings import Settings
from shared.skill import service as app
from tests.conftest import ROOT, SAMPLES

pytestmark = pytest.mark.integration  # a server and a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 120  # an upper bound for a page's answer under load, not a timing assertion


def _skip_reason() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: `make test` installs requirements-dev.txt"
    if not CHROMIUM or not CHROMEDRIVER:
        return (
            "no chromium and chromedriver on PATH: as root, `make test` installs them "
            "(apt-get install -y chromium chromium-driver)"
        )
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def serve(settings: Settings) -> Iterator[str]:
    service = app.SkillService(settings)
    app.reset_service(service)
    httpd = make_server(settings, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield f"http://{host!s}:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        app.reset_service(None)


@pytest.fixture
def classifier_server() -> Iterator[str]:
    yield from serve(Settings())


@pytest.fixture
def detection_server(tmp_path: Path) -> Iterator[str]:
    pytest.importorskip("torch")
    from tests.detection_models import build_yolo

    run = tmp_path / "yolo"
    build_yolo(run, ["can", "carton", "milk_bottle"], img_size=160)
    yield from serve(Settings(model_dir=run))


def wait_for(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition)


def drop(driver: Any, path: Path) -> None:
    """Drop `path` on the drop zone as a person's drag from the file manager would: a `drop` event whose
    DataTransfer holds the file (selenium cannot drag from outside the browser)."""
    data = base64.b64encode(path.read_bytes()).decode()
    driver.execute_script(
        """
        const [name, data] = arguments;
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/png" }));
        const zone = document.getElementById("drop");
        for (const type of ["dragenter", "dragover", "drop"]) {
          zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }
        """,
        path.name,
        data,
    )


def cards(driver: Any) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    return {card.find_element(By.TAG_NAME, "h2").text: card for card in driver.find_elements(By.CSS_SELECTOR, ".card")}


def answered(driver: Any, count: int) -> bool:
    from selenium.webdriver.common.by import By

    statuses = [s.text for s in driver.find_elements(By.CSS_SELECTOR, ".card .status")]
    return len(statuses) >= count and all(text != "classifying..." for text in statuses)


def severe_console_messages(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def only_this_server(driver: Any, base: str) -> list[str]:
    """Every resource the page loaded or fetched that did not come from `base` (or from the user's own files)."""
    names = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    return [n for n in names if not (n.startswith(base + "/") or n.startswith("blob:"))]


def test_a_picked_and_a_dropped_photo_get_their_labels(browser: Any, classifier_server: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(classifier_server + "/")
    model = browser.find_element(By.ID, "model")
    wait_for(browser, lambda d: model.text.startswith("model "))
    assert model.text.startswith("model sample-efficientnet-lite0-imagenet (multiclass, 1000 labels) from ")
    browser.find_element(By.ID, "files").send_keys(str(SAMPLES / "coffee.png"))
    drop(browser, SAMPLES / "chelsea.png")
    wait_for(browser, lambda d: answered(d, 2))
    shown = cards(browser)
    assert set(shown) == {"coffee.png", "chelsea.png"}
    coffee = shown["coffee.png"]
    assert coffee.find_element(By.CSS_SELECTOR, ".status").text == "espresso · model sample-efficientnet-lite0-imagenet"
    rows = [row.text.split("\n")[0] for row in coffee.find_elements(By.CSS_SELECTOR, "tr")]
    assert rows[0].startswith("espresso 0.95") and len(rows) == 5  # the skill's default topK
    assert coffee.find_element(By.CSS_SELECTOR, "tr.top").text.startswith("espresso")
    cat = shown["chelsea.png"].find_element(By.CSS_SELECTOR, ".status").text
    assert cat.split(" · ")[0] in ("Egyptian cat", "tabby", "tiger cat")
    # The image is shown, and the classifier draws nothing over it.
    image = coffee.find_element(By.TAG_NAME, "img")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 600
    assert coffee.find_elements(By.CSS_SELECTOR, "svg rect, svg polygon") == []
    assert severe_console_messages(browser) == []
    assert only_this_server(browser, classifier_server) == []


def test_a_dropped_photo_gets_its_boxes_drawn(browser: Any, detection_server: str) -> None:
    from selenium.webdriver.common.by import By

    photo = SAMPLES / "chelsea.png"
    body = json.dumps({"values": [{"recordId": "1", "data": {"image": base64.b64encode(photo.read_bytes()).decode()}}]})
    status, answer, _ = app.classify(body.encode(), {})
    assert status == 200
    objects = json.loads(answer)["values"][0]["data"]["objects"]
    assert objects, "the test's detection model finds objects in the photo"

    browser.get(detection_server + "/")
    wait_for(browser, lambda d: "object-detection" in d.find_element(By.ID, "model").text)
    drop(browser, photo)
    wait_for(browser, lambda d: answered(d, 1))
    card = cards(browser)["chelsea.png"]
    assert card.find_element(By.CSS_SELECTOR, ".status").text.startswith(f"{len(objects)} object")
    rects = card.find_elements(By.CSS_SELECTOR, "svg rect.box")
    assert len(rects) == len(objects)
    drawn = sorted((round(float(r.get_attribute("x")), 4), round(float(r.get_attribute("y")), 4)) for r in rects)
    assert drawn == sorted((round(o["box"]["topX"], 4), round(o["box"]["topY"], 4)) for o in objects)
    tags = [t.text for t in card.find_elements(By.CSS_SELECTOR, ".tag")]
    assert sorted(tags) == sorted(f"{o['label']} {o['score']:.2f}" for o in objects)
    # The drawing sits on the image: the overlay covers it exactly.
    image, overlay = browser.execute_script(
        "return [arguments[0], arguments[1]].map((e) => { const r = e.getBoundingClientRect(); "
        "return [r.left, r.top, r.width, r.height]; })",
        card.find_element(By.TAG_NAME, "img"),
        card.find_element(By.TAG_NAME, "svg"),
    )
    assert overlay == pytest.approx(image, abs=0.5)
    assert severe_console_messages(browser) == []
    assert only_this_server(browser, detection_server) == []


def test_masks_are_drawn_when_the_answer_has_polygons(browser: Any, classifier_server: str) -> None:
    """An instance segmentation answer: `polygon` per object, a list of flat [x0, y0, x1, y1, ...] lists of
    fractions of the image. Drawn by the page's own renderer on a card, in the browser."""
    from selenium.webdriver.common.by import By

    browser.get(classifier_server + "/")
    data = {
        "modelVersion": "seg-1",
        "objects": [
            {
                "label": "cat",
                "score": 0.91,
                "box": {"topX": 0.1, "topY": 0.2, "bottomX": 0.6, "bottomY": 0.9},
                "polygon": [[0.1, 0.2, 0.6, 0.2, 0.6, 0.9, 0.1, 0.9], [0.2, 0.3, 0.3, 0.3, 0.25, 0.4]],
            },
            {"label": "dog", "score": 0.5, "box": {"topX": 0.5, "topY": 0.5, "bottomX": 0.7, "bottomY": 0.7}},
        ],
    }
    browser.execute_script("window.renderAnswer(window.newCard('masks.png'), arguments[0])", data)
    card = cards(browser)["masks.png"]
    masks = card.find_elements(By.CSS_SELECTOR, "svg polygon.mask")
    assert [m.get_attribute("points") for m in masks] == ["0.1,0.2 0.6,0.2 0.6,0.9 0.1,0.9", "0.2,0.3 0.3,0.3 0.25,0.4"]
    assert len(card.find_elements(By.CSS_SELECTOR, "svg rect.box")) == 2
    assert card.find_element(By.CSS_SELECTOR, ".status").text == "2 objects · model seg-1"


def test_the_page_is_served_from_the_package_with_a_policy_against_other_origins(classifier_server: str) -> None:
    import urllib.request

    for path, kind in (("/", "text/html"), ("/page.js", "text/javascript"), ("/page.css", "text/css")):
        with urllib.request.urlopen(classifier_server + path, timeout=60) as response:
            assert response.headers["Content-Type"] == f"{kind}; charset=utf-8"
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'none'" in policy and "connect-src 'self'" in policy
            body = response.read().decode()
        assert (
            body == (ROOT / "shared" / "cli" / "static" / Path(path if path != "/" else "/index.html").name).read_text()
        )
        assert "http://" not in body.replace("http://www.w3.org/2000/svg", "") and "https://" not in body
