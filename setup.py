"""pip-installable project ``mobius``: the ``mobius_core`` model library and the
``mobius_ros`` node package. The distribution is not named after either package so that
``pip install -e .`` never removes the CMake-installed ROS interfaces (docs/ARCHITECTURE.md §5)."""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


setup(
    name="mobius",
    version="0.1.0",
    description="MOBIUS open-vocabulary instance segmentation for robots",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "mobius_core",
        "mobius_core.modeling",
        "mobius_core.modeling.layers",
        "mobius_core.modeling.baselines",
        "mobius_core.training",
        "mobius_core.data",
        "mobius_core.evaluation",
        "mobius_core.export",
        "mobius_ros",
    ],
    package_data={"mobius_core": ["zoo/*.yaml", "weights/*.pt"]},
    install_requires=_requirements(),
    extras_require={"clip": ["open_clip_torch>=2.24"]},
    entry_points={
        "console_scripts": ["mobius=mobius_core.cli:main", "mobius-ros=mobius_ros.cli:main"]
    },
)
