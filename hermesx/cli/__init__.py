"""The `hermesx` command."""

from hermesx.cli.main import main

__all__ = ["main"]
