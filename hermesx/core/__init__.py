"""Foundations every other part uses: errors, identities, codecs, configuration, files, the
snapshot format, the reply window.
"""
