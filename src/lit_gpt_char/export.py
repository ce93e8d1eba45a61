"""Export a checkpoint as plain files: `python -m lit_gpt_char.export CKPT OUT_DIR [format=native|hf|onnx]`.

native (the default): model.safetensors (the weights; the head tied to the embedding is stored
once), config.json (the model's sizes) and tokenizer.json (the seed's format). `load_generator`,
`sample`, `evaluate` and `serve` load it; exports holding model.pt (older ones) load the same way.
hf: a Hugging Face transformers directory (AutoModelForCausalLM, AutoTokenizer): a stock GPT2LMHeadModel
for GPT-2's parts, else remote code (trust_remote_code=True); our commands load it too.
onnx: native, plus model.onnx (ids and past keys/values in, logits and present keys/values out)
and generate.py, which samples from it with onnxruntime alone.
hf and onnx need the `export` extra. An existing export is replaced only with --force; a failed
export leaves OUT_DIR as it was.
"""

from __future__ import annotations

from pathlib import Path

from lit_gpt_char.console import ArgumentParser, quiet_broken_pipes
from lit_gpt_char.core.exports import FORMATS, check_export_target, save_export
from lit_gpt_char.errors import UserError, user_errors
from lit_gpt_char.loading import load_any


def export(
    ckpt: str | Path,
    out_dir: str | Path,
    force: bool = False,
    log_dir: str | Path | None = None,
    format: str = "native",
) -> Path:
    """Export a checkpoint (file, run directory, `latest`, or an export directory) into out_dir as
    format (native | hf | onnx); the target is checked before anything is loaded, and an existing export
    is replaced only with force."""
    out = check_export_target(out_dir, force, format)
    loaded = load_any(ckpt, log_dir=log_dir)
    try:
        return save_export(loaded, out, format)
    except OSError as e:  # a full disk, a quota, a directory made read-only meanwhile
        raise UserError(
            f"out_dir={out}: the export could not be written ({e.strerror or e}); {out} is as it was before"
        ) from None


KEYS = ("ckpt", "out_dir", "out")  # what a user who knows `sample ckpt=...` may put before a path


@user_errors
def main(argv: list[str] | None = None) -> None:
    quiet_broken_pipes()
    ap = ArgumentParser(prog="python -m lit_gpt_char.export", description=__doc__.splitlines()[0])
    ap.add_argument(
        "ckpt",
        help="a .ckpt file, a training run directory (its best checkpoint), `latest` (the run that saved a "
        "checkpoint last, under --log-dir) or an export directory",
    )
    ap.add_argument("out_dir", help="directory to write the export into")
    ap.add_argument("format_", nargs="?", metavar="format=FORMAT", help=f"one of {', '.join(FORMATS)} (default native)")
    ap.add_argument("--format", default=None, choices=list(FORMATS), help="the same, as an option")
    ap.add_argument("--force", action="store_true", help="replace the export already in OUT_DIR")
    ap.add_argument(
        "--log-dir", default=None, help="where `latest` looks for runs (default: $LIT_GPT_CHAR_LOG_DIR, else outputs)"
    )
    args = ap.parse_args(argv)
    keyed = [a for a in (args.ckpt, args.out_dir) if a.partition("=")[0] in KEYS and not Path(a).exists()]
    if keyed:  # `ckpt=latest out_dir=DIR`, as sample and evaluate take them
        bare = [a.partition("=")[2] if a in keyed else a for a in (args.ckpt, args.out_dir)]
        raise UserError(
            f"{keyed[0]}: export takes the checkpoint and the output directory as they are, without a key: "
            f"python -m lit_gpt_char.export {' '.join(bare)} [format=...]"
        )
    fmt = args.format or "native"
    if args.format_ is not None:
        key, eq, value = args.format_.partition("=")
        if key != "format" or not eq:
            raise UserError(f"{args.format_}: expected format=native, format=hf or format=onnx after OUT_DIR")
        if args.format and args.format != value:
            raise UserError(f"format={value} and --format {args.format} disagree: pass one of them")
        fmt = value
    out = export(args.ckpt, args.out_dir, force=args.force, log_dir=args.log_dir, format=fmt)
    print(f"exported to {out}" + ("" if fmt == "native" else f" (format={fmt})"))


if __name__ == "__main__":
    main()
