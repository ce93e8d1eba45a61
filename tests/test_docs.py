"""The commands the README and docs/ show: every `train`, `sample` and `evaluate` line in their shell
blocks composes with Hydra and passes the schemas' checks (types, ranges, choices), so a renamed
option or a moved config file breaks a test, not a reader's first try. Sweeps (`-m`) are checked
with the first value of each swept list; the links between the pages point at files that exist."""

from __future__ import annotations

import re
import shlex

import pytest
import torch
from helpers import REPO, compose_config, compose_train
from omegaconf import OmegaConf

from lit_gpt_char.evaluate import EvaluateConfig
from lit_gpt_char.options import build
from lit_gpt_char.sample import SampleConfig
from lit_gpt_char.training.run import check_config

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"^(?:srun )?(?:python -m lit_gpt_char\.|lit-gpt-char[ -])(train|sample|evaluate)\b(.*)$")


def shell_commands() -> list[tuple[str, str, list[str]]]:
    """(page:line, command, arguments) of each train/sample/evaluate command in a ```bash block."""
    found = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        in_bash, i = False, 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("```"):
                in_bash = not in_bash and line.strip() in ("```bash", "```sh")
            elif in_bash:
                start = i
                while line.rstrip().endswith("\\") and i + 1 < len(lines):  # continued lines
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                m = COMMAND.match(line.split("  #")[0].strip())
                if m:
                    args = shlex.split(m.group(2).split(" #")[0])
                    found.append((f"{page.relative_to(REPO)}:{start + 1}", m.group(1), args))
            i += 1
    return found


COMMANDS = shell_commands()


def test_the_docs_show_commands_of_every_kind():
    kinds = {c for _, c, _ in COMMANDS}
    assert kinds == {"train", "sample", "evaluate"} and len(COMMANDS) >= 30, COMMANDS


def first_of_each_sweep(args: list[str]) -> list[str]:
    """A sweep's overrides as one job sees them: the first value of each comma list; glob() dropped."""
    out = []
    for a in args:
        key, eq, value = a.partition("=")
        if not eq or "glob(" in value:
            continue
        if "," in value and not value.startswith(("[", "'", '"')):
            value = value.split(",")[0]
        out.append(f"{key}={value}")
    return out


@pytest.mark.parametrize("where, command, args", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_a_documented_command_composes_and_passes_its_checks(where, command, args, tmp_path):
    sweep = "-m" in args or "--multirun" in args
    args = [a for a in args if a not in ("-m", "--multirun") and not a.startswith("hydra.")]
    if sweep:
        args = first_of_each_sweep(args)
    # Values a reader fills in (<date>_<time>, PATH) and files of their own need not exist to compose.
    args = [re.sub(r"<[^>]*>", "x", a) for a in args]
    if command == "train":
        cfg = compose_train(args, tmp_path)
        OmegaConf.resolve(cfg)
        if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
            cfg.trainer.accelerator = "cpu"  # (a GPU config is refused here:) the rest of it is still checked
        check_config(cfg)
    else:
        cfg = compose_config(command, args, tmp_path)
        build(SampleConfig if command == "sample" else EvaluateConfig, cfg)


def test_links_between_the_pages_point_at_files_that_exist():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to {target}"


def test_no_page_holds_a_placeholder():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"@@\w+@@|\bTODO\b|\bTBD\b", text), page
