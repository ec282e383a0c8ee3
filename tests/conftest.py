"""Shared fixtures.  Service fixtures live in ``tests/plugins``: they skip with a visible
reason when a service is absent locally, and fail when ``CI=true``."""

from __future__ import annotations

pytest_plugins = [
    "tests.plugins.services",
    "tests.plugins.tls",
    "tests.plugins.s3",
    "tests.plugins.rabbitmq",
    "tests.plugins.postgres",
    "tests.plugins.private_rabbitmq",
    "tests.plugins.webhooks",
    "tests.plugins.celery",
]
