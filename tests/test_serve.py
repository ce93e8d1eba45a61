"""The web playground, end to end: the real `serve` command on 127.0.0.1, driven by a real headless
browser (Debian's chromium through selenium): the page shows the model's facts, streams the text in
chunks as it is generated (the same text `sample` writes for the same options), and shows bad input
as the sample command's one-line message. The endpoint's bad requests are checked directly too.
Set LIT_GPT_CHAR_SCREENSHOT=docs/playground.png to keep the screenshot."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import REPO, clean_env, require, run_main

from lit_gpt_char import serve
from lit_gpt_char.loading import load_generator

require("starlette")
require("uvicorn")
webdriver = require("selenium.webdriver")

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Decoding a tiny model one character at a time: on a busy 2-core machine, two torch threads spend their
# time waiting for each other (20x slower here), so the server and the reference text use one each.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
MAX_CHARS = "max_chars=1000000"  # generations long enough (minutes) that only a stop that works ends them in time


def reference(trained_run: Path, prompt: str, **options) -> str:
    """What `sample` writes for these options (float32 weights, one thread, as the server here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return load_generator(trained_run, device="cpu", precision="32").generate(prompt, **options)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """`python -m lit_gpt_char.serve` on a free port of 127.0.0.1; its URL. Stopped with Ctrl-C at the end."""
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lit_gpt_char.serve", f"ckpt={trained_run}", "port=0", "precision=32", MAX_CHARS],
            cwd=REPO,
            env=clean_env(ONE_THREAD),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.time() + 120
        while "playground: http://" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.1)
        url = log.read_text().split("playground: ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:"), url  # never more than this machine
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # after every test of the module: clients that left, stalled, sent junk
        try:
            assert proc.wait(timeout=20) == 0, log.read_text()
            assert "Traceback" not in log.read_text(), log.read_text()
        finally:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are missing: .ci/run installs them (apt-get install chromium ...)")
        pytest.skip("no chromium/chromedriver here: apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,860"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 60, every: float = 0.02):
    """condition()'s first truthy value, polled for at most `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def fill(driver, **values) -> None:
    for name, value in values.items():
        field = driver.find_element("id", name)
        field.clear()
        field.send_keys(str(value))


def test_the_page_streams_text_in_a_real_browser(server, browser, trained_run, tmp_path):
    browser.get(server)
    facts = wait_for(
        lambda: "parameters" in browser.find_element("id", "facts").text and browser.find_element("id", "facts").text
    )
    assert "step 200" in facts and "val loss" in facts and "2 layers × 64" in facts, facts
    assert browser.find_element("id", "temperature").get_attribute("value") == "0.8"  # SamplingOptions' defaults

    fill(browser, prompt="the king", max_new_tokens=1500, seed=7, top_k=20)
    browser.find_element("id", "generate").click()
    output = browser.find_element("id", "output")
    lengths = []
    while browser.execute_script("return document.getElementById('output').dataset.done") != "true":
        lengths.append(len(browser.execute_script("return document.getElementById('output').textContent")))
        assert len(lengths) < 3000, "no end to the generation"  # bounded: a minute or so at most
        time.sleep(0.02)
    text = browser.execute_script("return document.getElementById('output').textContent")
    assert int(output.get_attribute("data-chunks")) > 1  # it came in pieces, as generated
    assert any(len("the king") < n < len(text) for n in lengths)  # and was shown before it was whole
    assert text == reference(trained_run, "the king", max_new_tokens=1500, seed=7, top_k=20)  # what `sample` writes
    assert browser.find_element("id", "error").is_displayed() is False
    assert "characters/s" in browser.find_element("id", "status").text

    fill(browser, max_new_tokens=400)  # a screenshot that shows the page, not a wall of text
    browser.find_element("id", "generate").click()
    wait_for(lambda: browser.execute_script("return document.getElementById('output').dataset.done") == "true")
    shot = tmp_path / "playground.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get("LIT_GPT_CHAR_SCREENSHOT"):
        shutil.copy(shot, os.environ["LIT_GPT_CHAR_SCREENSHOT"])


BAD_ON_THE_PAGE = [
    ({"temperature": "hot"}, "temperature=hot: must be a number in [0, 10000]"),
    ({"max_new_tokens": "2.5"}, "max_new_tokens=2.5: must be an integer in [0, 100000000]"),
    ({"top_p": "0"}, "top_p=0: must be null or a number in (0, 1]"),
    ({"max_new_tokens": "1e9"}, "max_new_tokens=1000000000: must be at most 1000000 here"),
    ({"prompt": "the kingé"}, "not in the model's vocabulary: 'é'"),
]


@pytest.mark.parametrize("values, message", BAD_ON_THE_PAGE, ids=[m.split(":")[0] for _, m in BAD_ON_THE_PAGE])
def test_bad_input_on_the_page_is_one_readable_line(values, message, server, browser):
    browser.get(server)
    wait_for(lambda: browser.find_element("id", "temperature").get_attribute("value"))
    fill(browser, **{"prompt": "the king", "max_new_tokens": 20, **values})
    browser.find_element("id", "generate").click()
    error = browser.find_element("id", "error")
    wait_for(error.is_displayed, timeout=30)
    assert message in error.text and "Traceback" not in error.text and "\n" not in error.text, error.text
    assert browser.find_element("id", "output").text == ""


def test_unknown_characters_can_be_skipped_on_the_page(server, browser):
    browser.get(server)
    wait_for(lambda: browser.find_element("id", "temperature").get_attribute("value"))
    fill(browser, prompt="the kingé", max_new_tokens=30)
    browser.find_element("id", "skip_unknown").click()
    browser.find_element("id", "generate").click()
    wait_for(lambda: browser.execute_script("return document.getElementById('output').dataset.done") == "true")
    text = browser.execute_script("return document.getElementById('output').textContent")
    assert text.startswith("the king") and "é" not in text and len(text) == len("the king") + 30


def post(url: str, body: bytes) -> tuple[int, dict | str]:
    request = urllib.request.Request(f"{url}/generate", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


BAD_REQUESTS = [
    (b"not json", "the request body is not JSON"),
    (b"[1, 2]", "the request body must be a JSON object"),
    (b'{"prompt": 5}', "prompt=5: must be text"),
    (b'{"prompt": "the king", "slide": 2}', "unknown option(s) slide"),
    (b'{"prompt": ""}', "the prompt is empty"),
    (b'{"prompt": "a", "seed": -1}', "seed=-1: must be null or an integer"),
    (b'{"prompt": "a", "top_k": 0}', "top_k=0: must be null or an integer >= 1"),
    (b'{"prompt": "a", "on_unknown": "ignore"}', "on_unknown=ignore: must be one of error, skip"),
    (b'{"prompt": "a", "temperature": null}', "temperature=null: must be a number"),
    (b'{"prompt": "a", "max_new_tokens": "50000000"}', "max_new_tokens=50000000: must be at most 1000000 here"),
    (b'{"prompt": "a", "top_k": "${x}"}', "top_k=${x}: must be null or an integer >= 1"),
    (b'{"prompt": "' + b"a" * 1_000_001 + b'"}', "at most 1000000"),
    (b"[" * 100_000 + b"]" * 100_000, "the request body is not JSON (or is nested too deeply)"),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b"\xff\xfe", "the request body is not JSON"),
]


@pytest.mark.parametrize("body, message", BAD_REQUESTS, ids=[m[:40] for _, m in BAD_REQUESTS])
def test_bad_requests_get_a_400_and_one_line(body, message, server):
    status, answer = post(server, body)
    assert status == 400 and message in answer["error"] and "\n" not in answer["error"], answer


def test_info_and_a_plain_request(server, trained_run):
    with urllib.request.urlopen(f"{server}/info", timeout=30) as r:
        info = json.loads(r.read())
    assert info["facts"]["step"] == 200 and info["facts"]["block_size"] == 32 and info["max_chars"] == 1_000_000
    assert info["facts"]["params"] == load_generator(trained_run, device="cpu").num_params
    status, text = post(server, json.dumps({"prompt": "the king", "max_new_tokens": 50, "seed": 3}).encode())
    assert status == 200 and text == reference(trained_run, "the king", max_new_tokens=50, seed=3)


def test_a_port_in_use_is_one_error_line(server, capsys):
    port = server.rsplit(":", 1)[1]
    assert run_main(serve.main, "ckpt=whatever", f"port={port}") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: port={port} on 127.0.0.1 is in use") and len(err.strip().splitlines()) == 1


def test_serve_checks_its_options(capsys):
    assert run_main(serve.main, "ckpt=x", "port=70000") == 2
    assert "port=70000: must be an integer in [0, 65535]" in capsys.readouterr().err
    assert run_main(serve.main, "port=0") == 2
    assert "ckpt is required" in capsys.readouterr().err


def test_help_lists_the_serve_options(capsys):
    assert run_main(serve.main, "--help") == 0
    out = capsys.readouterr().out
    for key in ("ckpt=???", "host=127.0.0.1", "port=8000", "max_chars=10000", "precision=auto"):
        assert key in out, key
    assert "trainer" not in out and "optim" not in out


def test_the_pages_stop_frees_the_server_for_the_next_generation(server, browser, trained_run):
    browser.get(server)
    wait_for(lambda: browser.find_element("id", "temperature").get_attribute("value"))
    fill(browser, prompt="the king", max_new_tokens=1_000_000, seed=7, top_k=20)  # minutes, unless stopped
    browser.find_element("id", "generate").click()
    wait_for(lambda: int(browser.find_element("id", "output").get_attribute("data-chunks") or 0) > 2, timeout=30)
    browser.find_element("id", "stop").click()
    wait_for(lambda: browser.execute_script("return document.getElementById('output').dataset.done") == "true")
    assert browser.find_element("id", "status").text == "stopped"

    fill(browser, max_new_tokens=30)
    started = time.time()
    browser.find_element("id", "generate").click()
    wait_for(lambda: browser.execute_script("return document.getElementById('output').dataset.done") == "true", 15)
    assert time.time() - started < 10  # not after the stopped generation's minutes
    text = browser.execute_script("return document.getElementById('output').textContent")
    assert text == reference(trained_run, "the king", max_new_tokens=30, seed=7, top_k=20)


def raw_request(url: str, body: bytes, send_body: bool = True) -> socket.socket:
    """A client on a bare socket: a POST /generate whose body it may never send."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = f"POST /generate HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    sock.sendall(head + (body if send_body else b""))
    return sock


def test_a_client_that_leaves_mid_stream_frees_the_server(server, trained_run):
    for _ in range(3):  # and again: each time the model is free at once
        sock = raw_request(server, json.dumps({"prompt": "the king", "max_new_tokens": 1_000_000}).encode())
        received = b""
        while received.count(b"\r\n") < 12:  # the headers and a few chunks of text
            received += sock.recv(4096)
        assert received.startswith(b"HTTP/1.1 200"), received[:200]
        sock.close()  # as curl ... | head -c 100 does
        started = time.time()
        status, text = post(server, json.dumps({"prompt": "the king", "max_new_tokens": 20, "seed": 1}).encode())
        assert status == 200 and text == reference(trained_run, "the king", max_new_tokens=20, seed=1)
        assert time.time() - started < 5


def test_a_client_that_sends_headers_and_waits_blocks_nobody(server):
    waiting = raw_request(server, json.dumps({"prompt": "a", "max_new_tokens": 5}).encode(), send_body=False)
    try:
        started = time.time()
        status, _ = post(server, json.dumps({"prompt": "the king", "max_new_tokens": 20}).encode())
        assert status == 200 and time.time() - started < 5
    finally:
        waiting.close()


def test_a_client_that_stops_reading_loses_its_generation(monkeypatch):
    """In-process, with a send that never returns (a client whose window stays shut): after SEND_SECONDS its
    generation is closed and the model is free; so is it when the response is cancelled (a client gone)."""
    import anyio

    from lit_gpt_char import playground

    monkeypatch.setattr(playground, "SEND_SECONDS", 0.2)
    closed = []

    def pieces():
        try:
            while True:
                yield "x"
        finally:
            closed.append(True)

    async def main():
        lock = anyio.Lock()
        sent = []

        async def stalled_send(message):
            sent.append(message)
            if len(sent) > 2:
                await anyio.sleep(3600)

        response = playground.GenerationResponse(playground.generation(pieces(), lock, seconds=0.01))
        with anyio.fail_after(10):
            await response.stream_response(stalled_send)
        assert closed == [True] and not lock.locked()

        closed.clear()
        sent.clear()

        async def taking_send(message):
            sent.append(message)
            await anyio.sleep(0)

        response = playground.GenerationResponse(playground.generation(pieces(), lock, seconds=0.01))
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(response.stream_response, taking_send)
            with anyio.fail_after(30):  # until the generation runs (the start and a first chunk went out)
                while len(sent) < 2:
                    await anyio.sleep(0.01)
            tasks.cancel_scope.cancel()
        assert closed == [True] and not lock.locked()

    anyio.run(main)
