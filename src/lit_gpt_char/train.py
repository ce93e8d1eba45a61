"""Train a character GPT: `python -m lit_gpt_char.train [group=option ...] [key=value ...]`.

The options, their defaults and ranges: training/config.py; what a run does: training/run.py.
"""

from __future__ import annotations

from lit_gpt_char.config import run
from lit_gpt_char.helptext import help_text
from lit_gpt_char.training import run as training


def usage() -> str:
    """`lit-gpt-char train --help`: every schema of the train command, and its config groups."""
    from lit_gpt_char.training.config import SCHEMAS

    return help_text(
        "lit-gpt-char train: train a character GPT (the defaults: the CPU recipe, Tiny Shakespeare).",
        "lit-gpt-char train [group=option ...] [key=value ...]   (or python -m lit_gpt_char.train ...)",
        [(getattr(cls, "KEY", ""), cls) for cls in SCHEMAS.values()],
        skip=("model", "optim", "data", "trainer", "callbacks", "logger", "paths"),
        groups=(
            "experiment",
            "model",
            "data",
            "optim",
            "trainer",
            "callbacks",
            "logger",
            "debug",
            "hparams_search",
            "launcher",
        ),
        notes=["Any other Lightning Trainer argument: +trainer.NAME=VALUE. A whole recipe: experiment=seed."],
    )


main = run("train", training.main, help=usage)

if __name__ == "__main__":
    main()
