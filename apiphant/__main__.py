import sys

from apiphant.cli import main

sys.exit(main())
