"""`python -m llmsvc` is the same as the `llmsvc` console script."""

from llmsvc.cli import main

raise SystemExit(main())
