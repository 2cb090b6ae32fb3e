"""The harness every test uses: clusters, waits, log dumps."""
