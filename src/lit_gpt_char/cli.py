"""`lit-gpt-char <command> [options]`: every entry point under one command.

`lit-gpt-char --help` lists the commands; `lit-gpt-char <command> --help` lists that command's own
options. `lit-gpt-char sample ckpt=latest` is `python -m lit_gpt_char.sample ckpt=latest` (and
`lit-gpt-char-sample ckpt=latest`): the same main, with the same arguments.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# name -> what it does; each is the module lit_gpt_char.<name> with a main().
COMMANDS = {
    "train": "train a model (Hydra options: model.*, optim.*, data.*, trainer.*, experiment=...)",
    "sample": "write text with a trained model (ckpt=PATH or ckpt=latest)",
    "evaluate": "score a trained model on a text's val split",
    "serve": "a web playground that streams text as it is generated (the serve extra)",
    "export": "write a checkpoint as model.safetensors + config.json + tokenizer.json",
    "plot": "redraw a run's loss curves",
    "report": "summarise a sweep: a table, summary.csv and every job's val curve",
    "bench": "time training or sampling against a plain-PyTorch reference",
}


def available() -> dict[str, str]:
    """The commands this installation has (evaluate, for one, may be absent from an older one)."""
    return {name: what for name, what in COMMANDS.items() if importlib.util.find_spec(f"lit_gpt_char.{name}")}


def usage() -> str:
    commands = available()
    width = max(map(len, commands))
    lines = [
        "usage: lit-gpt-char <command> [options]   (`lit-gpt-char <command> --help` lists its options)",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {what}" for name, what in commands.items()),
        "",
        "Quick start: lit-gpt-char train   then   lit-gpt-char sample ckpt=latest",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in available():
        print(f"error: unknown command {name!r}: the commands are {', '.join(available())}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"lit_gpt_char.{name}")
    sys.argv = [f"lit-gpt-char {name}", *rest]  # Hydra and argparse read the command line from here
    module.main()


if __name__ == "__main__":
    main()
