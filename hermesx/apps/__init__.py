"""Applications built from atoms on the public client (docs/DESIGN.md §11).

Each app is a package of its own: its atoms are C sources in ``atoms/`` on
the SDK, its Python side a library over :class:`hermesx.client.Client`. The
layer sits above ``client`` and below ``cli`` and ``bench``.
"""
