"""`python -m hermesx` is the `hermesx` command."""

from __future__ import annotations

import sys

from hermesx.cli import main

sys.exit(main())
