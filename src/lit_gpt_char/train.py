"""Train a character GPT: `python -m lit_gpt_char.train [group=option ...] [key=value ...]`.

The options, their defaults and ranges: training/config.py; what a run does: training/run.py.
"""

from __future__ import annotations

from lit_gpt_char.config import run
from lit_gpt_char.training import run as training

main = run("train", training.main)

if __name__ == "__main__":
    main()
