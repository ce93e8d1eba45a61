"""Hydra configs, shipped inside the package as `lit_gpt_char.conf` (see pyproject.toml)."""
