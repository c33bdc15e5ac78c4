"""The package's types as its users meet them, checked by mypy --strict: correct code passes,
and the mistakes the types are there to catch (a misspelt expected state, a misspelt message
kind, a revision taken for a string) are errors. Imports of the package itself are followed
silently: this checks what users see, not the package's own internals."""

import pathlib
import re
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent / "typing"


def mypy(path: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental", str(path)],
        cwd=HERE.parent.parent,
        capture_output=True,
        text=True,
    )


def test_correct_code_type_checks():
    checked = mypy(HERE / "good.py")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_mistake_is_a_type_error():
    checked = mypy(HERE / "bad.py")
    lines = (HERE / "bad.py").read_text().splitlines()
    expected = {number for number, line in enumerate(lines, 1) if line.endswith("# error")}
    reported = {int(n) for n in re.findall(r"bad\.py:(\d+): error", checked.stdout)}
    assert reported == expected, checked.stdout
