"""`python -m rrs.mini` = `python -m rrs.mini.build`."""
import sys

from .build import main

sys.exit(main())
