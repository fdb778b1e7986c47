"""Real frameworks on shardloop and, as the reference, on asyncio's own loop.

* ``loop_factory`` -- parametrised fixture (ids ``asyncio`` / ``shardloop``);
  tests drive their framework with ``asyncio.Runner(loop_factory=...)``, the
  framework's own loop option, or a subprocess.
* ``pytest_asyncio_loop_factories`` -- pytest-asyncio's hook: every
  ``@pytest.mark.asyncio`` test here runs once per factory.

If shardloop cannot be imported its parameters are skipped with the import
error as the reason (tests/python/test_api.py fails in that case).
"""

import pytest

from _integration_support import FACTORIES, factory_params

@pytest.fixture(params=factory_params())
def loop_name(request):
    """``asyncio`` or ``shardloop``: the loop the framework must run on."""
    return request.param


@pytest.fixture
def loop_factory(loop_name):
    return FACTORIES[loop_name]


def pytest_asyncio_loop_factories(config, item):
    return FACTORIES


@pytest.fixture
def hang_timeout():
    """Bound for tests/conftest.py's hang guard."""
    return 60
