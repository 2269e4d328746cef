"""The client side: everything that talks to a host through its HTTP API and nothing else.

``api_client`` (the library), ``cli``/``commands``/``display`` (the ``asyncjobs`` command),
``discovery`` (where the host is), ``events`` (its event stream).  None imports the store or
the host.
"""
