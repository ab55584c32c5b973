"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    report = namespace["report"]
    assert 0.0 <= report.flip_rate <= 1.0
    assert namespace["theta_m"].shape == namespace["theta_inf"].shape == (200, 200)


def test_readme_prediction_example_runs():
    """The second block (neural-tangents-style prediction) continues the first one's ``data``."""
    import kernelattn as ka

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    ka.enable_x64()
    namespace: dict = {"ka": ka, "data": ka.data.load("digits", n_train=200, n_test=50)}
    exec(compile(blocks[1], "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["f_train"].shape == (3, 200, 10) and namespace["f_test"].shape == (3, 50, 10)
    assert namespace["ntk"].mean.shape == (50, 10) and namespace["ntk"].covariance.shape == (50, 50)


def test_readme_attribution_example_runs():
    """The third block (attribution estimators and their ground truth) needs only ``ka``."""
    import kernelattn as ka

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    ka.enable_x64()
    namespace: dict = {"ka": ka}
    exec(compile(blocks[2], "README.md", "exec"), namespace)  # noqa: S102
    assert list(namespace["table"]["method"]) == ["if", "tracin", "grad-cos", "representer", "trak"]
    assert namespace["helpful"].shape == (10, 3) and namespace["mine"].scores.shape == (10, 40)


def test_readme_empirical_ntk_fn_example_runs():
    """The fourth block (neural-tangents-style empirical NTK) continues the first one's ``data``."""
    import jax

    import kernelattn as ka

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    namespace: dict = {"ka": ka, "jax": jax, "data": ka.data.load("digits", n_train=200, n_test=50)}
    exec(compile(blocks[3], "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["theta"].shape == (50, 200) and namespace["full"].shape == (8, 8, 10, 10)
