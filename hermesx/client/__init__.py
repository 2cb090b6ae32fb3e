"""The public client: `Client`, `AtomProxy` and the types they return."""

from hermesx.client.api import AtomProxy, Client, Location, parse_checkpoint_policy

__all__ = ["AtomProxy", "Client", "Location", "parse_checkpoint_policy"]
