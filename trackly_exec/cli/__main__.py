"""``python -m trackly_exec.cli``."""

from trackly_exec.cli.main import main

raise SystemExit(main())
