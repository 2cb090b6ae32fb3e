"""The wire: generated messages, channels, TLS, roles, the one status-to-error mapping, typed
clients.
"""
