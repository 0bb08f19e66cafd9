"""README.md stays true: its set-up lines come first, every command has a rule in tests/readme_commands.py (which
.ci/run uses to run them all), and the files it links to exist."""

import re
from pathlib import Path

from tests.readme_commands import RULES, readme_commands, rule_for

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_the_two_set_up_commands_come_first():
    first = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1).splitlines()
    assert first == [
        "pip install -e . && python tools/train_net.py --config-file configs/quick/cifar10_demo.yaml",
        'pip install -e ".[test]" && python -m pytest -q tests',
    ]
    ci = (REPO / ".ci" / "run").read_text()
    assert "grep -m1 '^pip install -e \"\\.\\[test\\]\"' README.md" in ci and "tests.readme_commands" in ci


def test_every_command_has_a_rule_and_only_network_or_ci_commands_are_skipped():
    commands = readme_commands()
    assert len(commands) > 25
    skipped = {c: rule_for(c).skip for c in commands if rule_for(c).skip}
    assert set(skipped) == {
        "pip install -e .",
        "pip install -e .[test]",
        "python -m pytest -q tests",
        "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu",
    }, skipped
    used = {rule_for(c).pattern for c in commands}
    assert used == {r.pattern for r in RULES}, "rules that no README command uses"


def test_linked_files_exist():
    links = re.findall(r"\]\(((?:docs|datasets|configs)/[^)#]+)", README)
    assert links and all((REPO / link).is_file() for link in links), [x for x in links if not (REPO / x).is_file()]
    for cfg in set(re.findall(r"configs/[\w/]+\.yaml", README)):
        assert (REPO / cfg).is_file(), cfg
