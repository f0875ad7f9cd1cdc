import sys

from dvpo.cli import main

sys.exit(main())
