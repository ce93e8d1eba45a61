"""Export a checkpoint as plain files: `python -m lit_gpt_char.export CKPT OUT_DIR`.

Writes model.safetensors (the weights; the head tied to the embedding is stored once),
config.json (the model's sizes) and tokenizer.json (the seed's format). `load_generator(OUT_DIR)`,
`sample ckpt=OUT_DIR` and `serve ckpt=OUT_DIR` load the trio; exports holding model.pt (older
ones) load the same way. An existing export is replaced only with --force.
"""

from __future__ import annotations

from lit_gpt_char.core.checkpoint import export
from lit_gpt_char.errors import ArgumentParser, quiet_broken_pipes, user_errors


@user_errors
def main(argv: list[str] | None = None) -> None:
    quiet_broken_pipes()
    ap = ArgumentParser(prog="python -m lit_gpt_char.export", description=__doc__.splitlines()[0])
    ap.add_argument(
        "ckpt",
        help="a .ckpt file, a training run directory (its best checkpoint), `latest` (the run that saved a "
        "checkpoint last, under --log-dir) or an export directory",
    )
    ap.add_argument("out_dir", help="directory to write model.safetensors, config.json and tokenizer.json into")
    ap.add_argument("--force", action="store_true", help="replace the export already in OUT_DIR")
    ap.add_argument(
        "--log-dir", default=None, help="where `latest` looks for runs (default: $LIT_GPT_CHAR_LOG_DIR, else outputs)"
    )
    args = ap.parse_args(argv)
    out = export(args.ckpt, args.out_dir, force=args.force, log_dir=args.log_dir)
    print(f"exported to {out}")


if __name__ == "__main__":
    main()
