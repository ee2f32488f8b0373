"""Each study README's setting table is the one `bnlab readme-tables` generates from the composed sweep config:
a README whose block differs fails here, and regenerating writes exactly the block."""

from __future__ import annotations

import shutil

import pytest

from bnlab import REPO_ROOT
from bnlab.cli import main
from bnlab.results.readme_tables import END, START, setting_table, sync_readmes, updated_text

EXPERIMENTS = REPO_ROOT / "experiments"


def test_every_study_readme_holds_its_generated_setting_table():
    stale = sync_readmes(EXPERIMENTS, check=True)
    assert not stale, f"stale setting tables (run `bnlab readme-tables`): {[str(p) for p in stale]}"


def test_the_table_follows_the_config_and_the_command_rewrites_the_block(tmp_path, capsys):
    table = setting_table("lr_stress")
    cpu = next(line for line in table.splitlines() if line.startswith("| cpu | lr_stress |"))
    assert "300 x 128" in cpu and "2 x 5" in cpu and "fashion_mnist (10,000)" in cpu  # 30 x 10 steps, 5 seeds
    (tmp_path / "lr_stress").mkdir()
    readme = tmp_path / "lr_stress" / "README.md"
    shutil.copy(EXPERIMENTS / "lr_stress" / "README.md", readme)
    readme.write_text(readme.read_text().replace("300 x 128", "300 x 64"))  # a hand edit inside the block
    with pytest.raises(SystemExit) as stopped:
        main(["readme-tables", "--experiments", str(tmp_path), "--check"])
    assert stopped.value.code == 1
    assert "differs from the composed config" in capsys.readouterr().out
    main(["readme-tables", "--experiments", str(tmp_path)])
    text = readme.read_text()
    assert text.count(START) == text.count(END) == 1 and "300 x 128" in text
    assert updated_text("# x\n\n## Result\n", table).index(START) < updated_text("# x\n\n## Result\n", table).index(
        "## Result"
    )  # a README without a block gets one before its result
