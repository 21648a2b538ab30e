"""``python -m busmp``: see ``busmp._cli``."""

from ._cli import main

raise SystemExit(main())
