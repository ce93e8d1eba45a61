"""The web playground's app: one page, and an HTTP endpoint that streams text as it is generated.

    GET  /          the page (static/playground.html): sampling controls, the model's facts, the text
    GET  /info      the model's facts, the sampling defaults and limits, as JSON
    POST /generate  {"prompt": ..., "max_new_tokens": ..., "temperature": ..., "top_k": ..., "top_p": ...,
                    "seed": ..., "on_unknown": "error" | "skip"} -> the prompt, then the new text as it
                    comes (text/plain, chunked); a bad value -> 400 {"error": "<key>=<value>: must be ..."}

Every value is checked by SamplingOptions and TextGenerator.stream, exactly as `sample` checks it,
so the page shows the sample command's one-line messages, never a stack trace. One generation runs
at a time (the others wait, asynchronously): on a CPU two at once would each run at half speed. A
generation runs one chunk at a time in a worker thread, so every way a request can end early (the
client closes the socket, the page's Stop, a proxy's timeout, a client that stops reading, Ctrl-C on
the server) stops it at its next chunk and frees the model for the next request. Needs the `serve`
extra (Starlette); `serve.py` runs it with uvicorn.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from importlib.resources import files
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Send

from lit_gpt_char.core.generation import SamplingOptions
from lit_gpt_char.core.text_generator import TextGenerator
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import build

REQUEST_KEYS = ("prompt", "on_unknown", *(f for f in SamplingOptions.__dataclass_fields__ if f != "slide"))
MAX_BODY = 1_000_000  # bytes of one request: a prompt of a million characters is already more than enough
CHUNK_SECONDS = 0.03  # characters are sent in chunks of at most this much generation time
BODY_SECONDS = 10.0  # a request body must arrive within this long (a client that sends headers and waits)
SEND_SECONDS = 10.0  # a chunk the client does not take within this long ends its generation (it stopped reading)


def chunks(pieces: Iterator[str], seconds: float = CHUNK_SECONDS) -> Iterator[str]:
    """The characters of `pieces`, joined into one chunk per `seconds` of generation."""
    buffer, last = [], time.perf_counter()
    for piece in pieces:
        buffer.append(piece)
        if time.perf_counter() - last >= seconds:
            yield "".join(buffer)
            buffer, last = [], time.perf_counter()
    if buffer:
        yield "".join(buffer)


async def generation(pieces: Iterator[str], lock: anyio.Lock, seconds: float = CHUNK_SECONDS) -> AsyncIterator[str]:
    """The chunks of one generation, once it holds `lock` (one generation at a time; a waiting client that
    leaves just stops waiting). Each chunk is computed in a worker thread and is the only thing a
    cancellation waits for, so the lock is free again one chunk after the request ends, however it ends."""
    async with lock:
        chunked = chunks(pieces, seconds)
        try:
            while (chunk := await anyio.to_thread.run_sync(next, chunked, None)) is not None:
                yield chunk
        finally:
            chunked.close()


class GenerationResponse(StreamingResponse):
    """A StreamingResponse that always closes its generation when it ends (a client gone, a send that
    failed or stalled for SEND_SECONDS, the server's shutdown), rather than leaving the generator, and
    the model's lock, to the garbage collector."""

    body_iterator: AsyncIterator[str]

    async def stream_response(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                with anyio.move_on_after(SEND_SECONDS) as sent:
                    await send({"type": "http.response.body", "body": chunk.encode(self.charset), "more_body": True})
                if sent.cancelled_caught:  # the client stopped reading: give the model to the others
                    return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


def make_app(gen: TextGenerator, facts: dict[str, Any], max_chars: int = 10_000) -> Starlette:
    """The playground for one loaded model; facts: what the page shows of it (Loaded.facts() and more)."""
    page = files("lit_gpt_char").joinpath("static", "playground.html").read_text(encoding="utf-8")
    lock = anyio.Lock()
    defaults = build(SamplingOptions).to_dict()

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def info(request: Request) -> Response:
        return JSONResponse({"facts": facts, "defaults": defaults, "max_chars": max_chars})

    async def generate(request: Request) -> Response:
        try:
            with anyio.fail_after(BODY_SECONDS):
                body = await read_body(request)
        except TimeoutError:
            return error(f"the request body did not arrive within {BODY_SECONDS:.0f} s", status=408)
        except ClientDisconnect:
            return error("the client went away", status=400)
        if body is None:
            return error(
                f"the request is over {MAX_BODY} bytes: at most {MAX_BODY} (the model reads the last block_size)"
            )
        try:
            values = json.loads(body or b"{}")
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than the parser goes
            return error(
                'the request body is not JSON (or is nested too deeply): send an object such as {"prompt": "ROMEO:"}'
            )
        try:
            prompt, on_unknown, options = check_request(values, max_chars)
            ids = gen.encode_prompt(prompt, on_unknown)
            pieces = gen.stream(prompt, on_unknown=on_unknown, **options)  # checks every option, raises here
        except UserError as e:
            return error(str(e))
        text = gen.tokenizer.decode(ids)  # the prompt as the model reads it (skipped characters dropped)
        stream = generation(prepend(text, pieces), lock)
        headers = {"Cache-Control": "no-store", "X-Prompt-Characters": str(len(text))}
        return GenerationResponse(stream, media_type="text/plain; charset=utf-8", headers=headers)

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


async def read_body(request: Request) -> bytes | None:
    """The request's body, or None once it passes MAX_BODY bytes (read no further)."""
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY:
            return None
        parts.append(part)
    return b"".join(parts)


def error(message: str, status: int = 400) -> Response:
    return JSONResponse({"error": message}, status_code=status)


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
    if not isinstance(n, int) or isinstance(n, bool):  # text such as "50000000" is a number once checked
        n = build(SamplingOptions, options).max_new_tokens
    if n > max_chars:
        raise UserError(f"max_new_tokens={n}: must be at most {max_chars} here (the server's max_chars)")
    return prompt, on_unknown, options
