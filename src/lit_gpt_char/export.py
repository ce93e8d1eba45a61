"""Export a checkpoint as plain files: `python -m lit_gpt_char.export CKPT OUT_DIR`.

Writes model.pt (a plain state dict), tokenizer.json (the seed's format) and config.json;
`load_generator(OUT_DIR)` and `python -m lit_gpt_char.sample ckpt=OUT_DIR` load the trio.
"""

from __future__ import annotations

from lit_gpt_char.core.checkpoint import export
from lit_gpt_char.errors import ArgumentParser, quiet_broken_pipes, user_errors


@user_errors
def main(argv: list[str] | None = None) -> None:
    quiet_broken_pipes()
    ap = ArgumentParser(prog="python -m lit_gpt_char.export", description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", help="a .ckpt file or a training run directory")
    ap.add_argument("out_dir", help="directory to write model.pt, tokenizer.json and config.json into")
    args = ap.parse_args(argv)
    out = export(args.ckpt, args.out_dir)
    print(f"exported to {out}")


if __name__ == "__main__":
    main()
