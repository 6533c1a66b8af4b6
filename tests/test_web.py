"""The pages, as a person uses them: Debian's chromium driven by Playwright against the real stack.

Everything goes through nginx (with its Content-Security-Policy) to the uWSGI workers;
the browser is the only thing that differs from a visitor's.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, sync_playwright

from .digits import digit_png
from .stackrunner import ROOT

# Debian's chromium: Playwright's own browser download needs the internet, which CI may not have.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 15_000
CANVAS_SIDE = 280

# Pen strokes in canvas pixels that the digits model reads as these digits
# (checked through the JSON API with the same strokes rendered by Pillow).
STROKES = {
    "7": [[(80, 70), (200, 70), (120, 220)]],
    "0": [[(140, 50), (90, 80), (80, 140), (90, 200), (140, 230), (190, 200), (200, 140), (190, 80), (140, 50)]],
}


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"chromium not found at {CHROMIUM}: install Debian's chromium (scripts/setup.sh --dev) "
                    "or point CHROMIUM at a Chromium binary", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        yield browser
        browser.close()


@dataclass
class Visit:
    """One page on the stack, with the console errors and request URLs seen while using it."""

    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def outside_loopback(self) -> list[str]:
        return [url for url in self.requests if not _is_loopback(url)]


def _is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob"):
        return True
    try:
        return parts.scheme in ("http", "https") and ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        return False


@pytest.fixture
def visit(browser, stack, request):
    """A fresh browser context on the stack; indirect parametrization with False turns JavaScript off."""
    javascript = getattr(request, "param", True)
    context = browser.new_context(base_url=stack.url, java_script_enabled=javascript)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    seen = Visit(page)
    context.on("request", lambda r: seen.requests.append(r.url))
    # Chromium reports CSP violations and failed loads as console errors.
    page.on("console", lambda m: m.type == "error" and seen.errors.append(m.text))
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    yield seen
    context.close()


def first_digit(digits, label: int):
    return next(image for image, truth in digits if truth == label)


def upload(page: Page, tmp_path: Path, name: str, data: bytes):
    """Choose a file by its label, press the button, return the response the browser navigated to."""
    path = tmp_path / name
    path.write_bytes(data)
    page.get_by_label("Image file").set_input_files(str(path))
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Classify image").click()
    return navigation.value


def draw(page: Page, strokes) -> None:
    """Draw with the mouse: button down, move through the points in small steps, button up."""
    box = page.locator("#canvas").bounding_box()
    scale = box["width"] / CANVAS_SIDE

    def at(point):
        return box["x"] + point[0] * scale, box["y"] + point[1] * scale

    for stroke in strokes:
        page.mouse.move(*at(stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*at(point), steps=10)
        page.mouse.up()


def test_upload_a_digit_and_read_the_answer(visit, digits, tmp_path):
    page = visit.page
    page.goto("/")
    response = upload(page, tmp_path, "eight.png", digit_png(first_digit(digits, 8)))

    assert response.status == 200
    assert page.text_content("#answer").strip() == "This image is an 8"
    assert page.title().startswith("This image is an 8")
    rows = page.locator("#topk tbody tr")
    assert rows.count() == 5
    assert rows.first.locator("th").text_content() == "8"
    scores = [float(v) for v in page.locator("#topk meter").evaluate_all("ms => ms.map(m => m.value)")]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.5
    runners_up = ", ".join(f"{row.locator('th').text_content()} ({row.locator('td.num').text_content()})"
                           for row in rows.all()[1:])
    assert f"Runners-up: {runners_up}." in " ".join(page.text_content("#summary").split())
    stages = dict(zip(page.locator("#timings tbody th").all_text_contents(),
                      page.locator("#timings tbody td").all_text_contents()))
    assert {"decode", "preprocess", "inference", "postprocess"} <= set(stages)
    assert all(value.endswith(" ms") and float(value[:-3]) >= 0 for value in stages.values())
    assert page.eval_on_selector("#preview", "img => img.complete && img.naturalWidth") > 0

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "result-page.png"), full_page=True)
    assert visit.errors == []


@pytest.mark.parametrize("digit", sorted(STROKES))
def test_draw_a_digit_and_classify_it(visit, digit):
    page = visit.page
    page.goto("/")
    assert page.is_visible("#canvas"), "the drawing canvas is shown when JavaScript runs"
    classify = page.get_by_role("button", name="Classify drawing")
    assert classify.is_disabled(), "nothing drawn yet, nothing to classify"
    draw(page, STROKES[digit])
    with page.expect_navigation() as navigation:
        classify.click()

    assert navigation.value.status == 200
    assert page.text_content("#answer").strip() == f"This image is a {digit}"
    assert page.eval_on_selector("#preview", "img => img.naturalWidth") > 0
    assert visit.errors == []


@pytest.mark.parametrize("visit", [False], indirect=True, ids=["no-javascript"])
def test_upload_works_without_javascript(visit, digits, tmp_path):
    page = visit.page
    page.goto("/")
    assert page.is_hidden("#drawing"), "the canvas needs JavaScript, so it stays out of the way"
    # Light ink on a dark background, as a photo of a blackboard would be.
    response = upload(page, tmp_path, "three.png", digit_png(first_digit(digits, 3), dark_on_light=False))

    assert response.status == 200
    assert page.text_content("#answer").strip() == "This image is a 3"
    assert page.locator("#topk tbody tr").count() == 5


def test_pages_keep_the_security_policy_and_stay_on_this_machine(visit, digits, tmp_path):
    page = visit.page
    home = page.goto("/")
    # Without the policy header the "no violations" check below would prove nothing.
    assert "default-src 'self'" in home.headers["content-security-policy"]
    assert page.is_visible("#drawing"), "home.js ran under the policy"
    page.click("text=about digits")
    assert page.text_content("h1") == "digits"
    page.go_back()
    result = upload(page, tmp_path, "digit.png", digit_png(digits[0][0]))
    assert "default-src 'self'" in result.headers["content-security-policy"]
    page.wait_for_load_state("load")

    assert visit.errors == [], "console errors or CSP violations"
    assert visit.requests, "the browser's requests were recorded"
    assert visit.outside_loopback() == [], "the pages must work offline (no CDN, no trackers)"


def test_a_text_file_gets_a_friendly_error_page(visit, tmp_path):
    page = visit.page
    page.goto("/")
    response = upload(page, tmp_path, "notes.txt", b"shopping list: eggs, milk\n")

    assert response.status == 415
    assert_error_page(page, response, "Not a supported image")


def test_a_file_over_the_upload_limit_gets_a_friendly_error_page(visit, stack, tmp_path):
    page = visit.page
    page.goto("/")
    limit_mb = int(stack.env.get("MAX_UPLOAD_MB", "8"))
    # nginx refuses it before any worker sees it; its page must still speak to a person.
    response = upload(page, tmp_path, "huge.png", os.urandom((limit_mb + 1) * 1024 * 1024))

    assert response.status == 413
    assert_error_page(page, response, f"the limit is {limit_mb} MB")


def test_an_unknown_model_gets_a_friendly_error_page(visit, digits, tmp_path):
    page = visit.page
    page.goto("/")
    # A form from before the model was removed still names it.
    page.get_by_label("Model").evaluate("select => select.options[0].value = 'retired'")
    response = upload(page, tmp_path, "digit.png", digit_png(digits[0][0]))

    assert response.status == 404
    assert_error_page(page, response, "Unknown model 'retired'")
    response = page.goto("/models/retired")
    assert response.status == 404
    assert_error_page(page, response, "Unknown model 'retired'")


def assert_error_page(page: Page, response, words: str) -> None:
    assert response.headers["content-type"].startswith("text/html")
    assert page.is_visible("#error")
    assert words in page.text_content("#error")
    assert page.get_attribute("text=Back to the start", "href") == "/"
    body = page.content()
    assert "Traceback" not in body and '{"error"' not in body
