"""The console in a real browser: Debian's headless Chromium driven by Selenium (scripts/browser.sh installs
both for make test), against the e2e stack and the fake Stripe. A key holder pastes an admin key, sees the
balance the API reports, buys a pack through Checkout (the webhook, signed, credits exactly the pack),
generates an image in the playground (debited exactly its price), creates a key with a budget and revokes
it, and finds the request in the usage log.

Screenshots are taken every run; with IMAGEGATE_SCREENSHOTS=docs/img they are kept there for the docs.
"""

import os
import shutil
from pathlib import Path

import pytest

from imagegate.money import ledger

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no Chromium: scripts/browser.sh (make test) installs Debian's chromium and chromium-driver with "
    "apt-get as root, which this machine could not do",
)
WAIT_S = 30
MAX_SCREENSHOT_BYTES = 300_000


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,2600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path):
    keep = os.environ.get("IMAGEGATE_SCREENSHOTS")

    def take(driver, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        driver.save_screenshot(str(path))
        assert path.stat().st_size < MAX_SCREENSHOT_BYTES, f"{name}.png is {path.stat().st_size} bytes"
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)
        return path

    return take


def test_a_key_holder_buys_spends_and_manages_keys_in_the_console(
    browser, screenshots, stripe_stack, fake_stripe, http
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    stack = stripe_stack
    accounts = stack.service.accounts
    account_id = accounts.create_account(2_000_000, label="console")
    key = accounts.create_key(account_id, label="dev", admin=True)
    headers = {"authorization": f"Bearer {key}"}
    wait = WebDriverWait(browser, WAIT_S)

    def balance_shown() -> int:
        element = wait.until(lambda d: d.find_element(By.ID, "balance").get_attribute("data-micros") or None)
        return int(element)

    def wait_balance(micros: int) -> None:
        wait.until(lambda d: d.find_element(By.ID, "balance").get_attribute("data-micros") == str(micros))

    # Paste the key.
    browser.get(f"{stack.base_url}/console")
    browser.find_element(By.ID, "api-key").send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Ready."))
    api_balance = http.get(f"{stack.base_url}/v1/balance", headers=headers).json()["balance_micros"]
    assert balance_shown() == api_balance == 2_000_000
    assert browser.find_element(By.ID, "balance").text == "$2.00"
    assert browser.execute_script("return sessionStorage.getItem('imagegate-api-key')") == key
    assert browser.execute_script("return localStorage.length") == 0

    # Buy the starter pack through Checkout: the fake Stripe's page, then back to the console.
    Select(browser.find_element(By.ID, "pack")).select_by_value("starter")
    browser.find_element(By.ID, "buy").click()
    wait.until(ec.presence_of_element_located((By.ID, "pay-card")))
    assert browser.current_url.startswith(fake_stripe.base_url)
    assert browser.find_element(By.ID, "amount").text == "$5.00"
    screenshots(browser, "console-checkout")
    browser.find_element(By.ID, "pay-card").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Payment received"))
    assert fake_stripe.deliveries[-1] == ("checkout.session.completed", 200)
    wait_balance(7_000_000)
    assert accounts.balance(account_id) == 7_000_000
    wait.until(ec.text_to_be_present_in_element((By.ID, "topups"), "$5.00"))

    # The playground: one image, debited exactly its price.
    Select(browser.find_element(By.ID, "model")).select_by_value("dall-e-2")
    Select(browser.find_element(By.ID, "size")).select_by_value("256x256")
    browser.find_element(By.ID, "generate").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "play-result"), "it cost"))
    assert browser.find_element(By.ID, "play-image").get_attribute("src").startswith("data:image/png;base64,")
    log = http.get(f"{stack.base_url}/v1/usage/requests", headers=headers).json()["data"]
    newest = log[0]
    assert (newest["model"], newest["size"], newest["status"]) == ("dall-e-2", "256x256", "succeeded")
    price = newest["charged_micros"]
    assert price > 0
    wait_balance(7_000_000 - price)
    assert accounts.balance(account_id) == 7_000_000 - price
    assert f"({newest['request_id']})" in browser.find_element(By.ID, "play-result").text
    row = browser.find_element(By.CSS_SELECTOR, f"#log tr[data-request-id='{newest['request_id']}']")
    assert "dall-e-2" in row.text
    assert "succeeded" in row.text

    # Keys: create one (shown once), then revoke it.
    browser.find_element(By.ID, "key-label").send_keys("ci")
    browser.find_element(By.ID, "key-ipm").send_keys("5")
    browser.find_element(By.ID, "key-budget").send_keys("1.50")
    browser.find_element(By.ID, "create-key").click()
    wait.until(ec.visibility_of_element_located((By.ID, "new-key")))
    new_key = browser.find_element(By.ID, "new-key-value").text
    assert new_key.startswith("sk-ig-")
    created = accounts.authenticate(f"Bearer {new_key}")
    assert (created.account_id, created.admin, created.budget) == (account_id, False, 1_500_000)
    row = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"#keys tr[data-key-id='{created.key_id}']"))
    assert "$0.00 / $1.50" in row.text
    screenshots(browser, "console")
    revoke = wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, f"button[aria-label='Revoke key {created.key_id}']"))
    )
    revoke.click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"Key {created.key_id} revoked."))
    assert accounts.get_key(created.key_id)["status"] == "revoked"
    assert (
        http.get(f"{stack.base_url}/v1/balance", headers={"authorization": f"Bearer {new_key}"}).status_code
        == 401
    )

    # On a phone's width the page still reads (no sideways scrolling of the page itself).
    browser.set_window_size(390, 1800)
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    screenshots(browser, "console-phone")

    result = ledger.reconcile(stack.aws.dynamodb, stack.settings.table, account_id)
    assert result.ok, result.problems
