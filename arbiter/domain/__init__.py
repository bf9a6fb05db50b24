"""The pure core: values, policy evaluation, solving and planning.

Nothing in this package performs I/O, reads the clock or imports a database, HTTP or
cloud SDK module. Time comes in as an argument.
"""
