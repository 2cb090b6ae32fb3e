"""The `hermesx` command."""

from hermesx.cli.app import main

__all__ = ["main"]
