import sys

from spek_app.cli import main

sys.exit(main())
