"""Prefect flows and the ``kalora`` command line; nothing imports this package."""
