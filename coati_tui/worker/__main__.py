import sys

from coati_tui.worker.generate import main

sys.exit(main())
