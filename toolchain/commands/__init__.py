"""CLI handlers, one module per verb (``add_arguments`` and ``run``), and :mod:`.options`, the options several
verbs share (--output, --json, --resume, key=value overrides); light imports only."""
