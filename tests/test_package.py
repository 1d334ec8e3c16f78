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
