"""The public client: `Client` and `AtomProxy`; the values they return are in hermesx.core.types."""

from hermesx.client.api import AtomProxy, Client

__all__ = ["AtomProxy", "Client"]
