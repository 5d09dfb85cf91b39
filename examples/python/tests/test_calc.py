import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from calc import add, evaluate  # noqa: E402


def test_add():
    assert add(2, 3) == 5


def test_evaluate():
    assert evaluate("6 * 7") == 42
