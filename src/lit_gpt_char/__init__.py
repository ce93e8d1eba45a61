"""lit-gpt-char: character-level GPTs with PyTorch Lightning and Hydra.

corpus -> tokenizer.py -> data.py (windows) -> module.py (LightningModule around model.py)
-> checkpoint -> sample.py. Entry points: `python -m lit_gpt_char.train`, `... .sample`.
"""

__version__ = "0.1.0"
