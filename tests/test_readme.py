"""The README's set-up block and CI agree (its code examples run in the learners' tests)."""

import re

from _readme import README, readme_example


def test_setup_commands_match_ci():
    # .ci/run must run exactly the README's test command.
    text = README.read_text()
    block = re.search(r"## Set-up\n\n```bash\n(.*?)```", text, re.S)
    assert block, "README has no set-up block"
    lines = block.group(1).strip().splitlines()
    assert len(lines) == 2
    test_command = lines[1].split("&& ", 2)[-1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert test_command in ci, (test_command, ci)


def test_examples_are_present():
    for name in ("reward_model", "cpl", "online_registry"):
        assert "import" in readme_example(name)
