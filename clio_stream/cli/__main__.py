"""``python -m clio_stream.cli``: what the deploy manifests, the dev stack and the tests run."""

import sys

from clio_stream.cli.main import main

sys.exit(main())
