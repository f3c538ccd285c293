"""``python -m engine`` is the same as the ``aetherius`` console script."""

from engine.cli import main

raise SystemExit(main())
