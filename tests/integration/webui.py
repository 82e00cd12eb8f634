"""The web page in headless Chromium (selenium + chromedriver).
Usage: webui.py release URL ADMIN_TOKEN VIEWER_TOKEN SCREENSHOT_DIR: log in, see the apps, release
one and watch its steps turn green without a reload, a viewer refused a release, log out.
webui.py gate URL ADMIN_TOKEN GATED_DEPLOY_ID SCREENSHOT_DIR: see the gate's pending files,
approve, watch the deploy end; release again and cancel that deploy while it builds.
webui.py queued URL ADMIN_TOKEN RUNNING_ID:QUEUED_ID SCREENSHOT_DIR: on the app page, cancel the
deploy queued behind a running one, then the running one.
Exits non-zero on any failure."""
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.support.ui import WebDriverWait

mode, url, admin, arg, shots = sys.argv[1:6]
os.makedirs(shots, exist_ok=True)
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800"):
    opts.add_argument(a)
d = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
wait = WebDriverWait(d, 30)


def click_live(by, value):
    # A live page swaps its parts as events arrive: an element found a moment ago may be gone.
    def attempt(d):
        try:
            d.find_element(by, value).click()
            return True
        except StaleElementReferenceException:
            return False

    wait.until(attempt)


def confirm():
    # The confirmation page loads after the click: wait for it rather than race it.
    wait.until(lambda d: d.find_elements(By.ID, "confirm"))[0].click()


def shot(name):
    d.save_screenshot(os.path.join(shots, name + ".png"))


def login(token, keyboard=False):
    d.get(url + "/login")
    shot("login")
    # The field has the focus on load: typing and Enter is enough, without a mouse.
    if keyboard:
        d.switch_to.active_element.send_keys(token + Keys.ENTER)
    else:
        d.find_element(By.ID, "token").send_keys(token)
        d.find_element(By.ID, "login").click()
    wait.until(lambda d: d.find_elements(By.ID, "rows"))


def phase():
    # Read in one script: the live update may swap the element between a find and a read.
    return d.execute_script("var e = document.getElementById('phase'); return e && e.textContent")


def wait_phase(phases, timeout=120):
    WebDriverWait(d, timeout).until(lambda d: phase() in phases)
    return phase()


def gate(gated):
    login(admin)
    d.get(url + "/apps/hello")
    pending = d.find_element(By.CSS_SELECTOR, ".pending").text
    assert "0002_add.sql" in pending, pending
    shot("app-awaiting-approval")
    click_live(By.ID, "approve-" + gated)
    confirm()
    wait.until(lambda d: "/deploys/" + gated in d.current_url)
    assert wait_phase(("succeeded", "failed", "rolled_back")) == "succeeded", d.find_element(By.ID, "body").text
    # Release again: the tip builds slowly, long enough to cancel it from its app page.
    d.get(url + "/apps/hello")
    click_live(By.ID, "release")
    confirm()
    wait.until(lambda d: "/deploys/" in d.current_url and gated not in d.current_url)
    new = d.current_url.rsplit("/", 1)[1]
    d.get(url + "/apps/hello")
    click_live(By.ID, "cancel-" + new)
    confirm()
    assert wait_phase(("cancelled", "succeeded", "failed"), 60) == "cancelled", d.find_element(By.ID, "body").text
    shot("deploy-cancelled")
    print("webui: all checks passed")


def row_phase(deploy):
    return d.execute_script(
        "var r = document.querySelector('tr[data-deploy=\"' + arguments[0] + '\"] .phase');"
        " return r && r.textContent", deploy)


def queued(running, waiting):
    login(admin)
    d.get(url + "/apps/hello")
    WebDriverWait(d, 10).until(lambda d: row_phase(waiting) == "queued")
    assert row_phase(running) == "running", row_phase(running)
    shot("app-queued")
    click_live(By.ID, "cancel-" + waiting)
    confirm()
    wait.until(lambda d: "/deploys/" + waiting in d.current_url)
    assert wait_phase(("cancelled",), 30) == "cancelled", d.find_element(By.ID, "body").text
    shot("deploy-queued-cancelled")
    # The one that was building goes on until it is cancelled too.
    d.get(url + "/apps/hello")
    assert row_phase(running) == "running", row_phase(running)
    assert row_phase(waiting) == "cancelled", row_phase(waiting)
    click_live(By.ID, "cancel-" + running)
    confirm()
    wait.until(lambda d: "/deploys/" + running in d.current_url)
    assert wait_phase(("cancelled", "succeeded", "failed"), 60) == "cancelled", d.find_element(By.ID, "body").text
    print("webui: all checks passed")


try:
    if mode == "gate":
        gate(arg)
        sys.exit(0)
    if mode == "queued":
        queued(*arg.split(":"))
        sys.exit(0)
    viewer = arg
    login(admin)
    assert "hello" in d.find_element(By.ID, "rows").text, d.page_source
    assert admin not in d.page_source and admin not in d.current_url
    shot("overview")
    # The overview stays open in its tab while the release runs in another: it must show the
    # deploy without a reload.
    overview = d.current_window_handle
    d.execute_script("window.__kuaNoReload = 1")
    d.switch_to.new_window("tab")
    d.get(url + "/apps/hello")
    click_live(By.ID, "release")
    shot("confirm")
    confirm()
    wait.until(lambda d: "/deploys/" in d.current_url)
    # A marker that a reload would wipe: the steps must turn green with the page still the same.
    d.execute_script("window.__kuaNoReload = 1")
    # When each step's end first shows on the page, by the browser's clock (the same machine's).
    d.execute_script("""
      window.__kuaSeen = {};
      function look() {
        document.querySelectorAll('tr[data-step]').forEach(function (r) {
          if (r.dataset.finished && !(r.dataset.step in window.__kuaSeen))
            window.__kuaSeen[r.dataset.step] = [Date.now(), r.dataset.finished];
        });
      }
      look();
      new MutationObserver(look).observe(document.getElementById('body'), {childList: true, subtree: true});
    """)
    started = time.monotonic()
    assert wait_phase(("succeeded", "failed", "rolled_back")) == "succeeded", d.find_element(By.ID, "body").text
    assert d.execute_script("return window.__kuaNoReload") == 1, "the deploy page was reloaded"
    statuses = [e.text for e in d.find_elements(By.CSS_SELECTOR, "td.status")]
    assert statuses and all(s in ("succeeded", "skipped") for s in statuses), statuses
    seen = d.execute_script("return window.__kuaSeen")
    lags = {}
    for step, (shown_ms, finished) in seen.items():
        from datetime import datetime
        end_ms = datetime.fromisoformat(finished.replace("Z", "+00:00")).timestamp() * 1000
        lags[step] = (shown_ms - end_ms) / 1000
    print("step end to page (s): " + ", ".join(f"{k} {v:.3f}" for k, v in lags.items()))
    # Steps that had ended before the page loaded show up at once, with a lag of their age.
    live = {k: v for k, v in lags.items() if k in ("build", "recreate", "verify")}
    assert live and max(live.values()) < 1.0, f"a step's end took 1 s or more to show: {lags}"
    print(f"deploy page showed the end {time.monotonic() - started:.2f} s after the release")
    shot("deploy")
    d.switch_to.window(overview)
    WebDriverWait(d, 10).until(lambda d: "succeeded" in d.execute_script(
        "var r = document.querySelector('tr[data-app=hello]'); return r ? r.textContent : ''"))
    assert d.execute_script("return window.__kuaNoReload") == 1, "the overview was reloaded"
    shot("overview-live")
    click_live(By.LINK_TEXT, "hello")
    drift = d.find_element(By.ID, "drift").text
    assert "In sync" in drift, drift
    shot("app")
    # The overview now shows the drift the app page read, and the deploy's phase in words.
    d.get(url + "/")
    row = d.find_element(By.CSS_SELECTOR, "tr[data-app=hello]").text
    assert "succeeded" in row and "in sync" in row, row
    d.find_element(By.ID, "logout").click()
    wait.until(lambda d: "/login" in d.current_url)
    d.get(url + "/")
    assert "/login" in d.current_url, "still logged in after logout"

    login(viewer, keyboard=True)
    assert d.find_element(By.ID, "role").text == "viewer"
    # A phone's width: the overview fits without scrolling sideways.
    d.set_window_size(390, 800)
    d.get(url + "/")
    overflow = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the overview is {overflow} px wider than a phone"
    shot("overview-narrow")
    d.set_window_size(1100, 800)
    d.get(url + "/apps/hello")
    assert not d.find_elements(By.ID, "release"), "a viewer is offered a release"
    d.get(url + "/confirm?action=release&app=hello")
    confirm()
    msg = wait.until(lambda d: d.find_element(By.ID, "message")).text
    assert "viewer" in msg, msg
    shot("viewer-refused")
    d.find_element(By.ID, "logout").click()
    wait.until(lambda d: "/login" in d.current_url)
    print("webui: all checks passed")
finally:
    d.quit()
