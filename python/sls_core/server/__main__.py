"""``python -m sls_core.server serve ...`` (the same as ``sls-core serve ...``)."""

from sls_core.server.main import main

raise SystemExit(main())
