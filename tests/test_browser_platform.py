"""Each page opened by its URL on a fresh server (`python -m ui.serve`, the README's command) in a real browser: nothing
is fetched from another host (the app runs offline), the app server answers no request 404 beyond Streamlit's own
base-URL probe, the menu's icons come from the bundled Material Symbols font, and the server log has no deprecation
warning.

A fresh server for each page: the first session of a server that asks for a page by URL runs pages/<page>.py
without app.py (ui.frame.frame then reruns it through app.py), which is where a favicon was once fetched from
fonts.gstatic.com (the page's ":material/...:" menu icon became the favicon before any page icon was set).

Streamlit's base-URL probe: a page opened at /<page> makes Streamlit's frontend try /<page>/_stcore/health and
/<page>/_stcore/host-config first (it cannot tell a page name from a server.baseUrlPath) and then /_stcore/...;
the first two are answered 404. That is Streamlit's frontend, not the app (streamlit/streamlit#7074, open; the
maintainers call it the expected base-URL discovery), so those two requests, and only those, are allowed.
"""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.helpers import ROOT
from tests.helpers.browser import BROWSER_MARKS, NOTICE, drawn, start_server, stop_server

pytestmark = BROWSER_MARKS

# (URL path, the page's title): the app's root (the default page, Predict: Streamlit serves the default page at /
# only, /predict is not its URL) and every other page file there is
PAGE_TITLES = {"data": "Data", "label": "Label", "train": "Train", "runs": "Runs", "compare": "Compare",
               "teach": "Teach"}
PAGES = [("", "Predict")] + [(stem, title) for stem, title in PAGE_TITLES.items()
                             if (ROOT / "pages" / f"{stem}.py").exists()]
# Streamlit's frontend tries the page's path as a base URL before the root (streamlit/streamlit#7074)
BASE_URL_PROBE = ("_stcore/health", "_stcore/host-config")


@pytest.mark.slow
@pytest.mark.parametrize("path,title", PAGES, ids=[path or "root" for path, _ in PAGES])
def test_a_page_opened_by_its_url_stays_on_the_app_server(browser, tmp_path, path, title):
    home = tmp_path / "workspace"
    home.mkdir()
    log = tmp_path / "server.log"
    server, url = start_server(home, log, launcher=("ui.serve",))
    app_host = urlsplit(url).netloc
    requests: list[str] = []
    failed: list[tuple[int, str]] = []
    console: list[str] = []
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = context.new_page()
        # context-wide: the components' iframes too
        context.on("request", lambda request: requests.append(request.url))
        context.on("response", lambda response: failed.append((response.status, response.url))
                   if response.status >= 400 else None)
        page.on("console", lambda message: console.append(message.text))
        page.goto(f"{url}/{path}")
        page.get_by_text(NOTICE).first.wait_for(timeout=60_000)
        page.locator("h1").filter(has_text=title).first.wait_for(timeout=60_000)
        menu = page.locator("[data-testid='stSidebarNav']")
        menu.get_by_role("link", name="Train").wait_for(timeout=30_000)
        page.wait_for_load_state("networkidle", timeout=30_000)
        # the menu's icons are drawn with Streamlit's bundled Material Symbols font, loaded from the app server
        fonts = page.evaluate("""async () => { await document.fonts.ready;
            return [...document.fonts].filter(f => f.family.includes('Material Symbols')).map(f => f.status); }""")
        assert "loaded" in fonts, fonts
        favicon = page.evaluate("() => [...document.querySelectorAll('link[rel~=icon]')].map(l => l.href)")
        assert favicon and all(href.startswith(("data:", url)) for href in favicon), favicon
        drawn(page)  # the script's run is over: a late request (a favicon after the rerun) is made by now
        page.wait_for_load_state("networkidle", timeout=30_000)
        assert not page.get_by_text("Page not found").is_visible()

        foreign = [address for address in requests
                   if urlsplit(address).scheme in ("http", "https", "ws", "wss")
                   and urlsplit(address).netloc != app_host]
        assert not foreign, f"requests to other hosts: {foreign}"
        probe = {f"{url}/{path}/{endpoint}" for endpoint in BASE_URL_PROBE} if path else set()
        errors = [(status, address) for status, address in failed if address not in probe]
        assert not errors, f"error responses from the app server: {errors}"
        warnings = [text for text in console if "will be removed" in text]
        assert not warnings, warnings
    finally:
        context.close()
        stop_server(server)
    server_log = log.read_text(errors="replace")
    assert "will be removed" not in server_log, server_log[-3000:]
    assert "deprecat" not in server_log.lower(), server_log[-3000:]
    assert "Traceback" not in server_log, server_log[-3000:]
