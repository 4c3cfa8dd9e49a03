import sys

from bench.reliability.cli import main

sys.exit(main())
