"""The labelling page in a real browser: Debian's headless Chromium driven by Selenium.

Starts ``prefrl annotate`` on a tiny dataset, checks that both videos decode
and play, labels three queries with the keyboard, undoes one, checks the
labels file and fits a reward model on it with ``prefrl fit``. Skipped when
Chromium or its driver is missing, unless ``PREFRL_REQUIRE_BROWSER=1`` (CI sets
it after installing them). ``PREFRL_SCREENSHOT=PATH`` also saves the page's
screenshot there (``docs/annotate.png`` is made so).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


def _browser() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def _require() -> tuple[str, str]:
    found = _browser()
    if found is None:
        if os.environ.get("PREFRL_REQUIRE_BROWSER") == "1":
            pytest.fail("PREFRL_REQUIRE_BROWSER=1 but chromium/chromedriver are missing "
                        "(apt-get install chromium chromium-driver)")
        pytest.skip("chromium and chromium-driver are not installed")
    return found


def _start_annotate(data: Path, out: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefrl.cli", "annotate", "--dataset", str(data), "--out-dir",
         str(out), "--port", "0", "--annotator", "tester", "--width", "240", "--height", "180"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # SIGINT as in a terminal, even where this test inherited it ignored (a background job)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
    deadline = time.monotonic() + 240
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if "labelling page at " in line:
            return proc, line.split("labelling page at ")[1].split()[0]
    proc.kill()
    pytest.fail("prefrl annotate did not start: " + "".join(seen))


def _driver(chromium: str, chromedriver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required", "--window-size=900,760"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


VIDEO_STATE = """
return ['left', 'right'].map(id => {
  const v = document.getElementById(id);
  return {readyState: v.readyState, duration: v.duration, error: v.error && v.error.code,
          currentTime: v.currentTime, paused: v.paused, width: v.videoWidth, src: v.currentSrc};
});"""


def _wait(predicate, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what} (last: {value!r})")


def test_label_queries_in_a_real_browser(tmp_path, monkeypatch, capsys):
    chromium, chromedriver = _require()
    pytest.importorskip("selenium")
    from people_data import write_people_dataset
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    data = write_people_dataset(tmp_path / "data.npz")
    out = tmp_path / "people"
    proc, url = _start_annotate(data, out)
    driver = None
    try:
        driver = _driver(chromium, chromedriver)
        driver.get(url)
        progress = lambda: driver.find_element(By.ID, "progress").text

        def playing():
            videos = driver.execute_script(VIDEO_STATE)
            ok = all(v["readyState"] >= 2 and v["duration"] > 0 and v["error"] is None
                     and v["width"] > 0 and v["currentTime"] > 0 for v in videos)
            return videos if ok else None

        # Both videos decode (metadata, a frame, a duration) and play (time advances).
        videos = _wait(playing, "both videos to decode and play")
        assert videos[0]["src"] != videos[1]["src"]
        assert progress().startswith("0 / 5 answered")
        body = driver.find_element(By.TAG_NAME, "body")
        for i, key in enumerate((Keys.ARROW_LEFT, "2", "=")):
            body.send_keys(key)
            _wait(lambda i=i: progress().startswith(f"{i + 1} / 5 answered"), f"answer {i + 1}")
        _wait(playing, "the next query's videos to play")
        if os.environ.get("PREFRL_SCREENSHOT"):
            driver.save_screenshot(os.environ["PREFRL_SCREENSHOT"])
        body.send_keys("u")
        _wait(lambda: progress().startswith("2 / 5 answered"), "the undo")
        assert "Took back query 2" in driver.find_element(By.ID, "message").text
        assert driver.find_element(By.ID, "query-id").text == "2"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["answered"] == 2 and summary["annotators"] == ["tester"]

    from prefrl.annotate.store import LabelStore
    from prefrl.data import dataset as dataset_lib

    store = LabelStore.open(out / "labels.npz")
    np.testing.assert_array_equal(store.label[:2], [1.0, 0.0])  # ←: left (first); 2: right
    np.testing.assert_array_equal(store.mask, [True, True, False, False, False])
    np.testing.assert_array_equal(store.fields["annotator"], [0, 0, -1, -1, -1])
    assert store.next_pending() == 2  # the undone query comes back first
    dataset_lib.load(out / "labels.npz")  # an ordinary, valid dataset file

    # prefrl fit trains a reward model on the people's labels (in this process: no new JAX).
    from prefrl import cli

    monkeypatch.setattr(cli, "configure_jax", lambda **kwargs: None)  # conftest did it
    capsys.readouterr()
    assert cli.main(["fit", "--dataset", str(out / "labels.npz"), "--label", "human",
                     "--out", str(tmp_path / "rm.npz"), "--num-steps", "20",
                     "--ensemble-size", "1", "--batch-size", "2", "--valid-fraction", "0",
                     "--eval-every", "10"]) == 0
    fit = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (tmp_path / "rm.npz").exists() and fit
