"""Generated wire code (from protos/); do not edit."""
