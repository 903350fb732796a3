import sys

from tray.system.console_break import HELPER_FLAG

if len(sys.argv) > 1 and sys.argv[1] == HELPER_FLAG:
    # The console-less helper of tray.system.console_break, run by the bundle's own executable.
    from tray.system.console_break import main as console_break_main

    raise SystemExit(console_break_main(sys.argv[2:]))

from tray.cli import main

raise SystemExit(main())
