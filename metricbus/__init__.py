"""The ``metricbus`` commands: the top layer, which uses every library below it and which
none of them imports.

``metricbus.cli`` is the command line (``metricbus …``, ``python -m metricbus``); each
command lives in a module of its own: ``supervisor`` (``up``), ``demo``, ``report``,
``replay``, ``keys``, ``sample``. The libraries are ``bus`` (the foundation),
``publishers``, ``sinks`` and ``alerts``.
"""
