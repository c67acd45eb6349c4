"""The rule groups that deploy/prometheus/render_rules.py renders, one module per group.

  settings.py   AlertSettings from alert-settings.yaml, validated when built; durations in seconds
  common.py     what every alert carries: severity and scope labels, the runbook link
  surge.py      toolchain.recording / toolchain.alerts: negative-share rules and NegativeSentimentSurge per scope
  service.py    toolchain.recording / toolchain.alerts: latency and 5xx rules, the service alerts
  drift.py      toolchain.drift: live drift signals against the model's training-time reference
  canary.py     toolchain.canary: the canary track against the stable track
  render.py     the groups in order, and the YAML of the two rule files

render_rules.py puts its own folder on sys.path and re-exports every public name, so it stays the one
entry point (command line and importers alike). Needs only Python and PyYAML.
"""
