"""ament_flake8 over the package's Python files, with setup.cfg's [flake8] (line length 120).

The standard ament_python linter test; it runs where ament_flake8 is installed (``colcon test`` on a
robot: a test_depend in package.xml) and is skipped elsewhere.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["sage_irp_ros", "launch", "test", "bench", "setup.py"]


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    main = pytest.importorskip("ament_flake8.main", reason="ament_flake8 is not installed (a ROS test_depend)")
    rc, errors = main.main_with_errors(argv=["--config", str(ROOT / "setup.cfg"),
                                             *(str(ROOT / p) for p in PATHS if (ROOT / p).exists())])
    assert rc == 0, f"Found {len(errors)} code style errors / warnings:\n" + "\n".join(errors)
