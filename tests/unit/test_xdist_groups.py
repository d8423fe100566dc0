"""make test runs on pytest-xdist workers; every test of the one real Kubernetes control plane
must land in one group (one worker), or each worker starts a cluster of its own."""

from __future__ import annotations

import inspect
import re
import textwrap

import pytest

import tests.conftest

pytest_plugins = ["pytester"]


def test_tests_of_the_real_cluster_share_one_xdist_worker(pytester: pytest.Pytester) -> None:
    hook = textwrap.dedent(inspect.getsource(tests.conftest.pytest_collection_modifyitems))
    pytester.makeconftest(
        "import pytest\n\n"
        "@pytest.fixture(scope='session')\n"
        "def real_kube_cluster():\n"
        "    return 'cluster'\n\n"
        "@pytest.fixture\n"
        "def kube_namespace(real_kube_cluster):\n"
        "    return 'ns'\n\n" + hook
    )
    pytester.makepyfile(
        test_many="""
        def test_direct_1(real_kube_cluster): pass
        def test_direct_2(real_kube_cluster): pass
        def test_through_namespace(kube_namespace): pass
        def test_other_1(): pass
        def test_other_2(): pass
        def test_other_3(): pass
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-v", "-p", "xdist")
    result.assert_outcomes(passed=6)
    workers = {
        name: worker
        for worker, name in re.findall(
            r"\[(gw\d)\].*PASSED test_many.py::(\w+)", result.stdout.str()
        )
    }
    grouped = re.findall(r"PASSED test_many.py::(\w+)@real-kube", result.stdout.str())
    assert sorted(grouped) == ["test_direct_1", "test_direct_2", "test_through_namespace"]
    assert len({workers[name] for name in grouped}) == 1
