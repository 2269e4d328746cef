"""The shipped example jobs; config.json allow-lists them by module.

Kept empty on purpose: a worker imports only the module of the job it runs.
"""
