"""Fixture jobs for the engine tests; conftest copies this package next to each test's config."""
