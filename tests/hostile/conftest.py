"""The hostile-client suite runs the real daemon, like the integration layer."""

from tests.integration.conftest import gateway  # noqa: F401  (the fixture)
