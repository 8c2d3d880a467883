"""The page at `/`, in headless Chromium: it lists a scheduled follow-up, and its cancel button removes it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from followup.embedded import RedisServer
from tests.api_support import TOKEN, Api, api_env, start_api

DB = 14  # no other test file uses it
SCREENSHOT = Path("/tmp/followup-page.png")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them where apt-get works)",
)


@pytest.fixture(scope="module")
def api(redis_server: RedisServer, log_dir: Path) -> Iterator[Api]:
    client = redis.Redis.from_url(redis_server.url(DB))
    client.flushdb()
    server = start_api(api_env(redis_server.url(DB), "page:*=https://h.example/hook"), log_dir, name="api-page")
    yield server
    server.stop()
    client.flushdb()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    # The driver's path is given, so selenium-manager never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_lists_a_follow_up_and_cancels_it(api: Api, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert api.call("POST", "/followups", json={"key": "page:contact-7", "in": "1h"}).status_code == 201
    wait = WebDriverWait(browser, 10)
    browser.get(api.base + "/")
    # No token yet: the API answers 401 and the page asks for one.
    login = wait.until(ec.visibility_of_element_located((By.ID, "login")))
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    login.find_element(By.TAG_NAME, "button").click()

    row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-key="page:contact-7"]')))
    assert "page:*=https://h.example" in row.text
    assert browser.execute_script("return sessionStorage.getItem('followupToken')") == TOKEN

    row.find_element(By.CSS_SELECTOR, "button.cancel").click()
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, 'tr[data-key="page:contact-7"]')))
    assert api.call("GET", "/followups").json()["total"] == 0
    browser.save_screenshot(str(SCREENSHOT))  # for a person to look at when the test fails
