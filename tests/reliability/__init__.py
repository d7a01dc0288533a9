"""The reliability suite: load, faults, hostile input and isolation (see issue 6).

A package, so that the gateways its modules share are stopped as soon as its last test ends.
"""
