"""Market-data adapters, one module per source, and the registry that names them.

Adapters translate vendor errors into arbiter's exception tree at the boundary
(:mod:`arbiter.errors`) and never let SDK types reach the core.
"""
