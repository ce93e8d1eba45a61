"""lit-gpt-char: character-level GPTs with PyTorch Lightning and Hydra.

Layers, each importing only those above it:
  options.py, errors.py   typed options (default, type, range, help once) and user errors
  files.py                atomic writes (standard library only)
  core/                   no Lightning: tokenizer, token files, model, ops, generation, evaluation,
                          checkpoints as plain values, exports
  loading.py              a model from the path a user gives: Lightning checkpoints, run directories,
                          `latest`, exports (knows training's file layout, imports no Lightning)
  training/               Lightning: data, optimizer, LightningModule, callbacks, distributed, run
  results/                no torch: run status, plots, sweep summaries
  config.py               Hydra glue: schemas in the ConfigStore, one-line config errors
  train.py sample.py evaluate.py serve.py bench.py export.py plot.py report.py   thin entry points
                          (python -m ...; cli.py: `lit-gpt-char <command>` for all of them)
Data flows one way: corpus -> token file -> windows -> module -> checkpoint -> generator.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["TextGenerator", "load_generator"]


def __getattr__(name: str):
    # Imported on first use, so `import lit_gpt_char.<anything>` stays light.
    if name == "TextGenerator":
        from lit_gpt_char.core.text_generator import TextGenerator

        return TextGenerator
    if name == "load_generator":
        from lit_gpt_char.loading import load_generator

        return load_generator
    raise AttributeError(f"module 'lit_gpt_char' has no attribute {name!r}")
