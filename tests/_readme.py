"""Read code examples out of README.md, so the tests run exactly what users read."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example(name: str) -> str:
    """The python block that follows ``<!-- example: NAME -->`` in the README."""
    text = README.read_text()
    match = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", text, re.S)
    if not match:
        raise AssertionError(f"README has no example named {name!r}")
    return match.group(1)
