"""Package-level facts: one version, the public surface, show_config."""

import io

import sparseprune
from sparseprune import ops


def test_python_and_native_versions_agree():
    assert sparseprune.__version__ == ops.native_version()


def test_public_surface_is_explicit():
    for name in sparseprune.__all__:
        assert hasattr(sparseprune, name), name
    assert "_C" not in sparseprune.__all__


def test_show_config_lists_every_kernel_and_threads():
    buf = io.StringIO()
    text = sparseprune.show_config(file=buf)
    assert buf.getvalue().strip() == text
    for k in ops.list_kernels():
        assert k["name"] in text
    assert f"threads: {ops.get_num_threads()}" in text


def test_demo_minilm_rejects_bad_arguments_before_running(capsys):
    from sparseprune.cli import main

    assert main(["demo", "--model", "minilm", "--methods", "sparsegpt-70,bogus"]) == 2
    assert "method 'bogus'" in capsys.readouterr().err
    assert main(["demo", "--model", "minilm", "--distill-epochs", "-1"]) == 2
    assert "--distill-epochs must be >= 0" in capsys.readouterr().err
