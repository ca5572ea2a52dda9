import sys

from coati_tui.generate.worker import main

sys.exit(main())
