"""The feed pages in a real browser (Debian's chromium through selenium).

    feed_browser.py MEGALITH_BIN OUT_DIR

1. Generates data whose relay lists name a source relay on loopback, adds a
   person who follows 30 busy generated authors and "mallory", whose
   profile and posts are hostile (a <script>, an onerror image, javascript:
   links, a 60 KB note, right-to-left overrides), imports it all into a
   source `megalith serve --feed off`, and starts a second `megalith serve`
   whose feed jobs read the source relay.
2. With script on: opens /, types the npub, submits, sees the banner and
   posts; publishes new posts of a followed author to the source relay and
   sees them appear without a reload; checks that hostile content is inert
   text; clicks "Older posts" (no post twice); a bad npub gets a page that
   says what is wrong; no Content-Security-Policy violation in the console.
3. With script off: the same form; the page refreshes itself while the job
   runs, and a newly published post shows up through the refresh.

Screenshots go to OUT_DIR. Exits non-zero naming the first failed check.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from nostr_sdk import EventBuilder, Keys, Kind, Tag, Timestamp
from selenium import webdriver
from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                        TimeoutException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")

checks = 0


def fail(what):
    print(f"feed-browser: FAILED: {what}", file=sys.stderr)
    sys.exit(1)


def check(ok, what):
    global checks
    if not ok:
        fail(what)
    checks += 1


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_health(port, proc, log):
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            fail(f"megalith serve exited: {open(log).read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    fail("megalith serve did not answer /health within 30 s")


def sign(keys, kind, content, created_at, tags=()):
    return (
        EventBuilder(Kind(kind), content)
        .tags([Tag.parse(list(t)) for t in tags])
        .custom_created_at(Timestamp.from_secs(created_at))
        .finalize(keys)
    )


def browser(script):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=420,900", "--lang=en-US"]:
        options.add_argument(arg)
    if not script:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def post_ids(driver):
    return [e.get_attribute("id") for e in driver.find_elements(By.CSS_SELECTOR, "#posts > li.post")]


def wait_for(driver, condition, seconds, what):
    try:
        # A page that refreshes itself (the script-off fallback) can replace
        # an element between finding it and reading it: try again.
        return WebDriverWait(driver, seconds, poll_frequency=0.2,
                             ignored_exceptions=(NoSuchElementException,
                                                 StaleElementReferenceException)
                             ).until(lambda d: condition(d))
    except TimeoutException:
        fail(f"{what} (waited {seconds} s) at {driver.current_url}")


def submit(driver, base, npub):
    driver.get(base + "/")
    field = driver.find_element(By.NAME, "npub")
    field.send_keys(npub)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def main(binary, out):
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="megalith-browser.")
    src_port, web_port = free_port(), free_port()
    src_url = f"ws://127.0.0.1:{src_port}"
    base = f"http://127.0.0.1:{web_port}"
    procs = []
    try:
        data = os.path.join(tmp, "data.jsonl")
        subprocess.run([binary, "generate", "--count", "8000", "--authors", "150", "--seed", "5",
                        "--relays", src_url, "--out", data, "--quiet"], check=True)
        notes = {}
        with open(data) as f:
            for line in f:
                e = json.loads(line)
                if e["kind"] == 1:
                    notes[e["pubkey"]] = notes.get(e["pubkey"], 0) + 1
        busy = sorted(notes, key=lambda p: -notes[p])[:30]

        now = int(time.time())
        person, mallory, poster = Keys.generate(), Keys.generate(), Keys.generate()
        follows = busy + [mallory.public_key().to_hex(), poster.public_key().to_hex()]
        extra = [
            sign(person, 3, "", now - 3600, [("p", p) for p in follows]),
            sign(mallory, 0, json.dumps({
                "name": "<img src=x onerror=\"window.__pwned='name'\">\u202eevil",
                "picture": "javascript:window.__pwned='picture'",
            }), now - 3600),
        ]
        hostile = [
            "<script>window.__pwned='script'</script>",
            "<img src=x onerror=\"window.__pwned='img'\">",
            "click javascript:window.__pwned='link' or [x](javascript:alert(1))",
            "\u202egnp.exe and https://example.com/?q=<b>bold</b>",
            "long " * 12_000 + "END",
        ]
        for i, text in enumerate(hostile):
            extra.append(sign(mallory, 1, text, now - 600 + i))
        hostile_file = os.path.join(tmp, "hostile.jsonl")
        with open(hostile_file, "w") as f:
            for e in extra:
                f.write(e.as_json() + "\n")
        for path in (data, hostile_file):
            subprocess.run([binary, "import", "--quiet", "--data", os.path.join(tmp, "src"), path],
                           check=True, stdout=subprocess.DEVNULL)

        def serve(name, port, *args):
            log = os.path.join(tmp, f"{name}.log")
            proc = subprocess.Popen([binary, "serve", "--data", os.path.join(tmp, name),
                                     "--listen", f"127.0.0.1:{port}", *args],
                                    stdout=subprocess.DEVNULL, stderr=open(log, "w"))
            procs.append(proc)
            wait_health(port, proc, log)

        serve("src", src_port, "--feed", "off")
        serve("web", web_port, "--relay", src_url, "--allow-private-relays")

        npub = person.public_key().to_bech32()
        driver = browser(script=True)
        try:
            # The form, a bad key, then the person's key.
            submit(driver, base, "npub1garbage")
            # The click starts a navigation that the driver does not wait for:
            # wait for the answer page instead of racing it.
            wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".error"), 10,
                     "a bad npub's page shows no error")
            error = driver.find_element(By.CSS_SELECTOR, ".error").text
            check("not a public key" in error, f"a bad npub's page says what is wrong: {error!r}")
            driver.save_screenshot(os.path.join(out, "bad-npub.png"))

            submit(driver, base, npub)
            wait_for(driver, lambda d: "/timeline" in d.current_url, 10, "no redirect to /timeline")
            banner = driver.find_element(By.ID, "banner")
            check(banner.text != "" or post_ids(driver), "the banner or posts show at once")
            driver.execute_script("window.__marker = 'same page';")
            wait_for(driver, lambda d: len(post_ids(d)) >= 20, 20, "posts did not appear")
            driver.save_screenshot(os.path.join(out, "timeline-phone.png"))
            check(driver.execute_script("return window.__marker") == "same page",
                  "posts appeared without a reload")

            # New posts while the job is live: inserted in place, no reload.
            fresh = [sign(poster, 1, f"fresh post {i} from the poster", now + i) for i in range(3)]
            fresh_file = os.path.join(tmp, "fresh.jsonl")
            with open(fresh_file, "w") as f:
                for e in fresh:
                    f.write(e.as_json() + "\n")
            subprocess.run([binary, "publish", "--relay", src_url, fresh_file], check=True,
                           stdout=subprocess.DEVNULL)
            want = {"e-" + e.id().to_hex() for e in fresh}
            wait_for(driver, lambda d: want <= set(post_ids(d)), 20,
                     "new posts did not appear on the open page")
            check(driver.execute_script("return window.__marker") == "same page",
                  "new posts were inserted without a reload")
            ids = post_ids(driver)
            check(ids[:3] == ["e-" + e.id().to_hex() for e in reversed(fresh)],
                  f"new posts are placed newest first at the top: {ids[:4]}")
            check(len(ids) == len(set(ids)), "no post shown twice")

            # Hostile content is inert.
            check(driver.execute_script("return window.__pwned") is None,
                  f"hostile content ran: {driver.execute_script('return window.__pwned')}")
            page_text = driver.find_element(By.ID, "posts").text
            check("<script>window.__pwned='script'</script>" in page_text,
                  "the <script> post is shown as text")
            check("<img src=x onerror=" in page_text, "the onerror post is shown as text")
            scripts = driver.find_elements(By.TAG_NAME, "script")
            check(len(scripts) == 1, f"one script element, the page's own ({len(scripts)})")
            for a in driver.find_elements(By.TAG_NAME, "a"):
                href = a.get_attribute("href") or ""
                check(not href.lower().startswith(("javascript:", "data:")), f"a link to {href}")
            for img in driver.find_elements(By.TAG_NAME, "img"):
                check((img.get_attribute("src") or "").startswith("https://"),
                      f"an image from {img.get_attribute('src')}")
                check(img.get_attribute("onerror") is None, "an image with a handler")
            details = driver.find_elements(By.CSS_SELECTOR, ".text details summary")
            check(any("show all" in d.text for d in details), "the 60 KB note is folded")
            long_post = [d for d in details if "show all" in d.text][0]
            driver.execute_script("arguments[0].scrollIntoView()", long_post)
            driver.save_screenshot(os.path.join(out, "hostile.png"))

            # Older posts: a new page, none of the first page's posts again.
            first = set(post_ids(driver))
            older = driver.find_element(By.LINK_TEXT, "Older posts")
            older.click()
            wait_for(driver, lambda d: "until=" in d.current_url, 10, "Older posts did not navigate")
            wait_for(driver, lambda d: post_ids(d), 10, "the older page has no posts")
            second = post_ids(driver)
            check(not (set(second) & first), "no post on both pages")
            check(driver.find_element(By.TAG_NAME, "body").get_attribute("data-live") is None,
                  "an older page does not update itself")

            # A desktop-sized look, and the console: no policy violation.
            driver.set_window_size(1280, 900)
            driver.get(base + f"/timeline?npub={npub}")
            driver.save_screenshot(os.path.join(out, "timeline-desktop.png"))
            logs = driver.get_log("browser")
            violations = [l["message"] for l in logs if "Content Security Policy" in l["message"]
                          and "img-src" not in l["message"]]
            check(not violations, f"CSP violations: {violations}")
        finally:
            driver.quit()

        # Script off: the refresh fallback.
        driver = browser(script=False)
        try:
            other = Keys.generate()
            extra2 = [sign(other, 3, "", now - 3600, [("p", poster.public_key().to_hex())])]
            subprocess.run([binary, "publish", "--relay", src_url, "-"], check=True,
                           input="".join(e.as_json() + "\n" for e in extra2), text=True,
                           stdout=subprocess.DEVNULL)
            submit(driver, base, other.public_key().to_bech32())
            wait_for(driver, lambda d: "/timeline" in d.current_url, 10, "no redirect (script off)")
            wait_for(driver, lambda d: len(post_ids(d)) >= 3, 20, "posts did not appear (script off)")
            late = sign(poster, 1, "a late post, seen after a refresh", now + 100)
            subprocess.run([binary, "publish", "--relay", src_url, "-"], check=True,
                           input=late.as_json() + "\n", text=True, stdout=subprocess.DEVNULL)
            wait_for(driver, lambda d: ("e-" + late.id().to_hex()) in post_ids(d), 20,
                     "the refresh did not bring the new post (script off)")
            driver.save_screenshot(os.path.join(out, "timeline-no-script.png"))
        finally:
            driver.quit()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                code = p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                fail("megalith serve did not stop within 15 s of SIGTERM")
            if code != 0:
                fail(f"megalith serve exited {code}")
    print(f"feed-browser: {checks} checks passed; screenshots in {out}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        fail("usage: feed_browser.py MEGALITH_BIN OUT_DIR")
    main(sys.argv[1], sys.argv[2])
