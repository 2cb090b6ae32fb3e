"""Finding an atom: the invoker (local stash, TAD chains, storesite fallback) and the name-
service facade.
"""
