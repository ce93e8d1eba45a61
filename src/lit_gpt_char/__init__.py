"""lit-gpt-char: character-level GPTs with PyTorch Lightning and Hydra.

corpus -> tokenizer.py -> data.py (windows) -> module.py (LightningModule around model.py)
-> checkpoint (checkpoint.py) -> generate.py / sample.py.
Entry points: `python -m lit_gpt_char.train`, `... .sample`, `... .export`.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_generator", "TextGenerator"]


def __getattr__(name: str):
    # Imported on first use, so `import lit_gpt_char.<anything>` stays light.
    if name in __all__:
        from lit_gpt_char import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'lit_gpt_char' has no attribute {name!r}")
