"""A web playground for a trained model: `python -m lit_gpt_char.serve ckpt=PATH|latest [port=8000]`.

Opens http://127.0.0.1:8000, a page with the sampling controls (prompt, length, temperature, top-k,
top-p, seed) and the model's facts (size, training step, val loss), where text streams in as it is
generated. The page and its endpoint: playground.py. Needs the `serve` extra:
`pip install -e ".[serve]"` (Starlette and uvicorn). Ctrl-C stops it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
from dataclasses import dataclass

from omegaconf import DictConfig

from lit_gpt_char.config import register, run
from lit_gpt_char.core.text_generator import precision_option
from lit_gpt_char.errors import UserError
from lit_gpt_char.helptext import help_text
from lit_gpt_char.loading import load_any, load_generator
from lit_gpt_char.options import Options, build, option

LOCAL = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig(Options):
    """The options of `python -m lit_gpt_char.serve`."""

    ckpt: str = option(
        "???",
        "a .ckpt file, a training run directory (its best checkpoint), an export directory, or latest "
        "(the best checkpoint of the run under log_dir that saved one last)",
    )
    log_dir: str | None = option(
        None, "where ckpt=latest looks: the train command's paths.log_dir; null: $LIT_GPT_CHAR_LOG_DIR, else outputs"
    )
    host: str = option(
        "127.0.0.1", "the address to listen on; 0.0.0.0: every interface (anyone who reaches this machine can use it)"
    )
    port: int = option(8000, "the port to listen on; 0: any free one (printed at start)", ge=0, le=65535)
    max_chars: int = option(10_000, "the most characters one request may ask for", ge=1, le=10_000_000)
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    precision: str = precision_option()
    compile: bool = option(
        False, "torch.compile the decode step: 2-3x faster per character after a 20-50 s warm-up at the first request"
    )


register("serve", ServeConfig)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the model loads, so a port in use is said at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"host={host}: not an address of this machine ({e.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        what = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be used ({e.strerror})"
        raise UserError(f"port={port} on {host} {what}: pass another port=N, or port=0 for any free one") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(raw: DictConfig | ServeConfig) -> None:
    """Load the model, then serve the playground until Ctrl-C."""
    cfg = build(ServeConfig, raw)
    try:
        import uvicorn

        from lit_gpt_char.playground import make_app
    except ImportError as e:
        raise UserError(
            f"the playground needs the serve extra ({e.name} is missing): pip install -e '.[serve]'"
        ) from None
    sock = bind(cfg.host, cfg.port)
    try:
        loaded = load_any(cfg.ckpt, log_dir=cfg.log_dir)
        gen = load_generator(loaded, device=cfg.device, precision=cfg.precision, compile=cfg.compile)
        facts = {**loaded.facts(), "device": str(gen.device), "precision": gen.precision}
        app = make_app(gen, facts, cfg.max_chars)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log(f"model: {facts['params'] / 1e6:.2f}M parameters, from {loaded.source}")
        if cfg.host not in LOCAL:
            log(f"note: host={cfg.host} lets other machines use the playground (and this machine's CPU)")
        log(f"playground: http://{shown}:{port}  (Ctrl-C stops it)")
        # A generation in progress gets 2 s to finish on Ctrl-C; a second Ctrl-C stops at once.
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn hands Ctrl-C back once it has shut down
            server.run(sockets=[sock])
        log("playground stopped")
    finally:
        sock.close()


def usage() -> str:
    """`lit-gpt-char serve --help`: this command's options, from ServeConfig."""
    return help_text(
        "lit-gpt-char serve: a web page to write with a trained model, text streaming in as it comes.",
        "lit-gpt-char serve ckpt=PATH|latest [port=8000] [key=value ...]   (or python -m lit_gpt_char.serve ...)",
        [("", ServeConfig)],
        notes=["The sampling options (length, temperature, top-k, top-p, seed) are set on the page."],
    )


main = run("serve", serve, help=usage)

if __name__ == "__main__":
    main()
