"""Hostile job modules and a live ``asyncjobs serve`` harness for the reliability tests.

``hostile.py`` is copied into each test's project directory (next to its config.json), so
the worker child imports it the way it imports a user's ``jobs/``; ``live.py`` runs a real
``asyncjobs serve`` subprocess on a loopback port 0 and talks to it over HTTP.
"""
