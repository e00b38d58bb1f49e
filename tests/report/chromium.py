"""Headless Chromium driven over the DevTools protocol (a websocket on 127.0.0.1), for the report's
browser test: open a page, evaluate a script in it, take a screenshot.  aiohttp (in the lock through
Ray) speaks the websocket; nothing else is needed beyond Debian's `chromium` package."""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

MISSING = "chromium is not installed: run `make browser-deps` as root (Debian's chromium package)"
# Flags: headless without a GPU; --no-sandbox because the tests run as root; no first-run pages,
# extensions, component updates, sync, pings or other background traffic; and every host name
# unresolvable but 127.0.0.1, so the page (file://) and the protocol are all the browser reaches.
FLAGS = ("--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-default-apps", "--disable-domain-reliability", "--no-pings",
         "--disable-client-side-phishing-detection", "--disable-features=Translate,OptimizationHints,MediaRouter",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0")
LISTENING = re.compile(r"DevTools listening on (ws://127\.0\.0\.1:\d+/\S+)")


def executable() -> str:
    exe = shutil.which("chromium")
    if not exe:
        raise RuntimeError(MISSING)
    return exe


class Browser:
    """One headless Chromium process; `page(url)` loads a page in a new tab and returns its session."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 1600) -> None:
        self.proc = subprocess.Popen([executable(), *FLAGS, f"--user-data-dir={profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = self._devtools_url(timeout=60)
        self._ids = itertools.count(1)
        self.stderr_tail: list[str] = []

    def _devtools_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            seen.append(line.rstrip())
            m = LISTENING.search(line)
            if m:
                return m.group(1)
        self.close()
        raise RuntimeError("chromium did not start its DevTools endpoint: " + " | ".join(seen[-5:]))

    async def _call(self, ws: aiohttp.ClientWebSocketResponse, method: str, params: dict | None = None,
                    session: str | None = None) -> dict[str, Any]:
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await ws.send_str(json.dumps(msg))
        while True:
            reply = json.loads((await ws.receive(timeout=60)).data)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def _inspect(self, url: str, script: str, screenshot: Path | None) -> Any:
        async with aiohttp.ClientSession() as http, http.ws_connect(self.url, max_msg_size=0) as ws:
            target = (await self._call(ws, "Target.createTarget", {"url": "about:blank"}))["targetId"]
            session = (await self._call(ws, "Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
            await self._call(ws, "Page.enable", session=session)
            await self._call(ws, "Page.navigate", {"url": url}, session)
            ready = "new Promise(r => document.readyState === 'complete' ? r(1) : addEventListener('load', () => r(1)))"
            await self._call(ws, "Runtime.evaluate", {"expression": ready, "awaitPromise": True}, session)
            out = await self._call(ws, "Runtime.evaluate", {"expression": script, "returnByValue": True,
                                                            "awaitPromise": True}, session)
            if "exceptionDetails" in out:
                raise RuntimeError(f"the page script failed: {out['exceptionDetails']}")
            if screenshot is not None:
                shot = await self._call(ws, "Page.captureScreenshot",
                                        {"format": "png", "captureBeyondViewport": True}, session)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            await self._call(ws, "Target.closeTarget", {"targetId": target})
            return out["result"].get("value")

    def evaluate(self, url: str, script: str, screenshot: Path | None = None) -> Any:
        """Load `url`, wait for its load event, return `script`'s value (JSON); optionally a full-page PNG."""
        return asyncio.run(self._inspect(url, script, screenshot))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
