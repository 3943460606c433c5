"""The README's code map names every module of the package, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_map() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_code_map_matches_the_tree() -> None:
    block = _code_map()
    package = ROOT / "lightning_score"
    named: set[Path] = set()
    folder = package
    for line in block.splitlines():
        if not line.startswith("  "):  # the repository's top level, not the package
            continue
        if not line.startswith("   "):  # an entry of lightning_score/: a module or a subpackage
            sub = re.match(r"  ([a-z_]+)/\s", line)
            folder = package / sub[1] if sub else package
        for name in re.findall(r"\b([a-z_0-9]+\.py)\b", line):
            named.add(folder / name)
    modules = {
        p for p in package.rglob("*.py") if p.name != "__init__.py" and p.parent.name != "commands"
    }
    missing = sorted(str(p.relative_to(ROOT)) for p in modules - named)
    stale = sorted(str(p.relative_to(ROOT)) for p in named - modules if p.name != "__init__.py")
    assert not missing, f"modules the README's code map does not name: {missing}"
    assert not stale, f"the code map names files that do not exist: {stale}"
    assert (ROOT / "lightning_score" / "commands").is_dir() and "commands/" in block


def test_the_from_python_block_runs(tmp_path: Path, monkeypatch) -> None:
    """The README's "From Python" code block, executed as it stands in a folder that holds the
    repository's configs and a tiny quickstart checkpoint at the path the block names."""
    import shutil

    import torch
    from tiny_checkpoint import tiny_quickstart_checkpoint

    text = (ROOT / "README.md").read_text()
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    ckpt = tiny_quickstart_checkpoint(tmp_path / "train")
    target = tmp_path / "work" / "runs/quickstart/checkpoints/last.ckpt"
    target.parent.mkdir(parents=True)
    shutil.copy(ckpt, target)
    (tmp_path / "work" / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path / "work")
    scope: dict = {}
    exec(compile(code, "README.md (From Python)", "exec"), scope)
    assert scope["out"].uint8.shape == (16, 1, 8, 8) and (tmp_path / "work/digit.png").is_file()
    assert scope["bpd"].shape == (4,) and torch.isfinite(scope["bpd"]).all()
    assert scope["filled"].samples.shape == (8, 1, 8, 8)
    assert 0 <= scope["images"].min() <= scope["images"].max() <= 1
    assert scope["trainer"].global_step == 20
    assert any((tmp_path / "work/my_logs").rglob("metrics.csv"))
