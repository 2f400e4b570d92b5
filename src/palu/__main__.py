import sys

from palu.cli import main

sys.exit(main())
