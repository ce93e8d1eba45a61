"""The web playground's app: one page, and an HTTP endpoint that streams text as it is generated.

    GET  /          the page (static/playground.html): sampling controls, the model's facts, the text
    GET  /info      the model's facts, the sampling defaults and limits, as JSON
    POST /generate  {"prompt": ..., "max_new_tokens": ..., "temperature": ..., "top_k": ..., "top_p": ...,
                    "seed": ..., "on_unknown": "error" | "skip"} -> the prompt, then the new text as it
                    comes (text/plain, chunked); a bad value -> 400 {"error": "<key>=<value>: must be ..."}

Every value is checked by SamplingOptions and TextGenerator.stream, exactly as `sample` checks it,
so the page shows the sample command's one-line messages, never a stack trace. One generation runs
at a time (the others wait): on a CPU two at once would each run at half speed. Needs the `serve`
extra (Starlette); `serve.py` runs it with uvicorn.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from importlib.resources import files
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lit_gpt_char.core.generation import SamplingOptions, TextGenerator
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import build

REQUEST_KEYS = ("prompt", "on_unknown", *(f for f in SamplingOptions.__dataclass_fields__ if f != "slide"))
MAX_BODY = 1_000_000  # bytes of one request: a prompt of a million characters is already more than enough
CHUNK_SECONDS = 0.03  # characters are sent in chunks of at most this much generation time


def chunks(pieces: Iterator[str], lock: threading.Lock, seconds: float = CHUNK_SECONDS) -> Iterator[str]:
    """The characters of `pieces`, joined into one chunk per `seconds`, under `lock` (one generation at a
    time). A client that goes away stops the generation at its next chunk."""
    with lock:
        buffer, last = [], time.perf_counter()
        for piece in pieces:
            buffer.append(piece)
            if time.perf_counter() - last >= seconds:
                yield "".join(buffer)
                buffer, last = [], time.perf_counter()
        if buffer:
            yield "".join(buffer)


def make_app(gen: TextGenerator, facts: dict[str, Any], max_chars: int = 10_000) -> Starlette:
    """The playground for one loaded model; facts: what the page shows of it (Loaded.facts() and more)."""
    page = files("lit_gpt_char").joinpath("static", "playground.html").read_text(encoding="utf-8")
    lock = threading.Lock()
    defaults = build(SamplingOptions).to_dict()

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def info(request: Request) -> Response:
        return JSONResponse({"facts": facts, "defaults": defaults, "max_chars": max_chars})

    async def generate(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return error(f"the request is {len(body)} bytes: at most {MAX_BODY} (the model reads the last block_size)")
        try:
            values = json.loads(body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error('the request body is not JSON: send an object such as {"prompt": "ROMEO:"}')
        try:
            prompt, on_unknown, options = check_request(values, max_chars)
            ids = gen.encode_prompt(prompt, on_unknown)
            pieces = gen.stream(prompt, on_unknown=on_unknown, **options)  # checks every option, raises here
        except UserError as e:
            return error(str(e))
        text = gen.tokenizer.decode(ids)  # the prompt as the model reads it (skipped characters dropped)
        stream = chunks(prepend(text, pieces), lock)
        headers = {"Cache-Control": "no-store", "X-Prompt-Characters": str(len(text))}
        return StreamingResponse(stream, media_type="text/plain; charset=utf-8", headers=headers)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/info", info),
            Route("/generate", generate, methods=["POST"]),
        ]
    )


def prepend(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def error(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)


def check_request(values: object, max_chars: int) -> tuple[str, str, dict[str, Any]]:
    """(prompt, on_unknown, sampling options) of a request body; UserError naming the key otherwise."""
    if not isinstance(values, dict):
        raise UserError('the request body must be a JSON object such as {"prompt": "ROMEO:"}')
    unknown = sorted(set(values) - set(REQUEST_KEYS))
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)}: the valid ones are {', '.join(REQUEST_KEYS)}")
    prompt = values.get("prompt", "\n")
    if not isinstance(prompt, str):
        raise UserError(f"prompt={prompt}: must be text")
    on_unknown = values.get("on_unknown", "error")
    options = {k: v for k, v in values.items() if k not in ("prompt", "on_unknown")}
    n = options.get("max_new_tokens")
    if isinstance(n, int) and not isinstance(n, bool) and n > max_chars:
        raise UserError(f"max_new_tokens={n}: must be at most {max_chars} here (the server's max_chars)")
    return prompt, on_unknown, options
