"""The local stack: ``llmsvc up``, ``down``, ``status`` and ``validate``.

It starts components as ordinary ``llmsvc`` processes (never imports them):
registry → router → babysitters, each after the one before is ready.
"""
