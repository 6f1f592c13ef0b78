"""The README's Python example runs and prints what it says it prints."""

import contextlib
import io
import math
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_finds_the_two_to_one_weight():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README has no Python example"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(blocks[0], str(README), "exec"), {})
    weight = float(printed.getvalue().split()[-1])
    # 128 walkers x 200 draws of a well-mixed chain: the weight's standard error is below 0.01,
    # so 0.05 is a 5-sigma band; NUTS would print 0.5 or 1 here.
    assert abs(weight - 2 / 3) < 0.05


def test_readme_training_example_runs_two_objectives():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2, "the README has no training example"
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(blocks[1], str(README), "exec"), namespace)
    assert namespace["result"].trainer.objective.name == "pcd"
    assert namespace["scored"].trainer.objective.name == "dsm"
    assert len(namespace["result"].history[-1]["mode_weights"]) == 2
    assert math.isfinite(namespace["scored"].history[-1]["loss"])
