"""Seeing a running cluster: metrics, traces and atom logs (docs/DESIGN.md §12).

One layer above :mod:`hermesx.core`, below everything else, so nodes,
storesites, clients and the gateway all report through the same code:

- :mod:`hermesx.observe.metrics` — the Prometheus metrics of a process and
  the HTTP endpoint that serves them;
- :mod:`hermesx.observe.tracing` — OpenTelemetry spans of invocations and
  the context carried with a call; off, it costs nothing;
- :mod:`hermesx.observe.atomlog` — the bounded log lines of each atom,
  which follow it across moves and recoveries;
- :mod:`hermesx.observe.logflood` — the rate of warnings a peer can cause.
"""
