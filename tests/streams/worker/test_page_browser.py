"""The results page in a real browser (Debian's chromium, headless, driven by selenium) over the
query API on the demo catalog: search by text, see the expected card with its photo, ask for
more like it, like two cards and get recommendations, and keep a screenshot."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import uvicorn

from streams.worker.api import QueryService, create_api
from tests.conftest import free_port

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1280,960")
WAIT_S = 60


@pytest.fixture
def page_url(query_service: QueryService) -> Iterator[str]:
    """The API app served over real HTTP in a thread, as a worker serves it."""
    query_service.api_key = ""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(query_service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(WAIT_S)


@pytest.fixture
def browser() -> Iterator["webdriver.Chrome"]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def test_search_more_like_this_and_recommend_in_a_browser(page_url: str, browser, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)

    def card(product_id: str):
        return wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, f'.card[data-product-id="{product_id}"]')))

    def photo_loaded(element) -> bool:
        return browser.execute_script("const i = arguments[0].querySelector('img'); return i.complete && i.naturalWidth > 0;",
                                      element)

    browser.get(page_url + "/")
    box = wait.until(seen.element_to_be_clickable((By.ID, "text")))
    box.send_keys("FNF Yellow Printed Sari")
    browser.find_element(By.ID, "go").click()

    sari = card("53010")  # the demo catalog's first product
    assert sari.find_element(By.CSS_SELECTOR, ".title").text == "FNF Yellow Printed Sari"
    assert "499.00 INR" in sari.find_element(By.CSS_SELECTOR, ".price").text
    assert "matched on" in sari.find_element(By.CSS_SELECTOR, ".why").text
    wait.until(lambda _: photo_loaded(sari))
    assert browser.find_element(By.ID, "heading").text.startswith("Results for")
    assert "FNF Yellow Printed Sari" in browser.find_elements(By.CSS_SELECTOR, ".card .title")[0].text
    browser.save_screenshot(str(tmp_path / "search.png"))

    sari.find_element(By.CSS_SELECTOR, "button.more").click()
    wait.until(seen.text_to_be_present_in_element((By.ID, "heading"), "More like"))
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, ".card")) > 0)
    similar = [c.get_attribute("data-product-id") for c in browser.find_elements(By.CSS_SELECTOR, ".card")]
    assert "53010" not in similar and len(similar) >= 10
    first = browser.find_elements(By.CSS_SELECTOR, ".card")[0]
    wait.until(lambda _: photo_loaded(first))

    for element in browser.find_elements(By.CSS_SELECTOR, ".card")[:2]:
        element.find_element(By.CSS_SELECTOR, "button.like").click()
    recommend = browser.find_element(By.ID, "recommend")
    assert recommend.text == "Recommend from liked (2)" and recommend.is_enabled()
    recommend.click()
    wait.until(seen.text_to_be_present_in_element((By.ID, "heading"), "Recommended from"))
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, ".card")) > 0)
    recommended = {c.get_attribute("data-product-id") for c in browser.find_elements(By.CSS_SELECTOR, ".card")}
    assert not recommended & set(similar[:2])  # the liked products themselves are never recommended
    assert browser.find_element(By.ID, "status").get_attribute("class") != "error"

    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000
